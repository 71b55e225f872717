"""anytime-cpt: continual pre-training with anytime fine-tuning evaluation, on Ray."""
