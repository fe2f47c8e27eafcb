"""Tokenizer and prompt handling."""
