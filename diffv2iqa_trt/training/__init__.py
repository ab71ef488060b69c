"""Training of the demo weights: synthetic distortions of real photographs, an SSIM pseudo-MOS, restorer
pre-training and IQA training, evaluation. Needs scikit-image (the `dev` extra) and, for the curves, matplotlib."""
