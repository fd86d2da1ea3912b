"""Datasets with part regions: CUB keypoints, CUB expert masks, face landmarks (read by the index and the evaluation)."""
