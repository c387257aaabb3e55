"""The dual encoder: tokenizer, image and text towers, heads, the model and its saving."""
