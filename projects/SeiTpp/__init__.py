"""SeiT++ (Lee et al., ECCV 2024, "Masked Token Modeling Improves
Storage-efficient Training", arXiv 2312.10105) on SeiT (Park et al., ICCV
2023, arXiv 2303.11114): vision training on stored VQ tokens."""
