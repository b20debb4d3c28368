"""Training code for ReT-2: the contrastive loss (the model package never imports from here)."""
