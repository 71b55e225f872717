"""Layer finetune: the one fine-tuning loop and its plug-ins (CoCa, RepCali), verbalizers, scores."""
