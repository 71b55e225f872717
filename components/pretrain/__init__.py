"""Layer pretrain: the one continual pre-training loop and its plug-ins (HPrompt-CPT, expert distillation)."""
