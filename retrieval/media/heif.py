"""HEIC/HEIF photos (iPhones' default) through pillow-heif, the only module that imports it.

pillow-heif's wheels carry libheif with its HEVC decoder. It plugs into Pillow as an opener,
so once :func:`register` has run, ``Image.open`` reads a HEIC like any JPEG: EXIF (date,
camera, GPS, orientation) through ``getexif()``, and 10- or 12-bit pictures converted to
8 bits per channel, their 8-bit rendering. AVIF is read by Pillow's own plugin (its wheels
carry libavif since Pillow 11.3); this libheif build has no AV1 decoder.

Registration is explicit and idempotent: every path that decodes a user's file (the
decoding workers, the server's thumbnail process, contact sheets) goes through
:func:`retrieval.media.decode.decode`, which calls it first; nothing registers as a side
effect of importing this module.
"""

from __future__ import annotations

from PIL import Image


def register() -> None:
    """Make ``Image.open`` read HEIC/HEIF in this process; cheap when already done."""
    if "HEIF" in Image.OPEN:
        return
    import pillow_heif  # imported on first use: processes that never meet a HEIC skip loading libheif

    # No thumbnails or depth maps: only the primary picture is wanted, and skipping the
    # auxiliary images saves their decode. 8-bit output is pillow-heif's default
    # (convert_hdr_to_8bit), which is what the model, thumbnails and sheets take.
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
