"""CLIP-style contrastive image-text training on Flickr8k: encoders by name, heads, loss, retrieval."""
