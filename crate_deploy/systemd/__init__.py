"""systemd's own file formats, read the way systemd reads them."""
