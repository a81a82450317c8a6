"""Dataset formats, checked I/O, preprocessing, sampling and phantoms."""
