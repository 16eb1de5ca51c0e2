"""New weights for a running node (an RL refit): from a safetensors file on disk, or by
broadcast from a trainer over a `torch.distributed` group, copied in place into the weights
region; and the weight version every generation reply names."""
