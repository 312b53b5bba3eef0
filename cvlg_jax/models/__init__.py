"""Two-tower image-text models and their registry."""
