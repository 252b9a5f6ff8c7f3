"""Files in, pixels out: walking folders, reading files safely, decoding with deadlines, EXIF."""
