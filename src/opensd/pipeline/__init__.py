"""Generation modes composed from models, text and sampling."""
