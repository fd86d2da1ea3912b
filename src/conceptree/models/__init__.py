"""Model loading: architectures, local weights, preprocessing and class names."""
