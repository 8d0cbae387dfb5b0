"""``ftp-export bench``: dense vs routed on the same runtime, in the same process."""
