"""`mnist serve`: a trained run behind HTTP, with a page to draw digits on."""
