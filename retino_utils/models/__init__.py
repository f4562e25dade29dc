"""The networks and what they learn from: the architectures (one entry each), torchvision's or block-built ResNets, ImageNet weights, and the losses."""
