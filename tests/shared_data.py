"""Where the real-data tests find ``../shared`` (beside the checkout); where it is absent they skip."""
import os

FSDD_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                          "fsdd"))
"""The Free Spoken Digit Dataset's root (readers accept it or its ``recordings/`` folder)."""
FSDD_RECORDINGS = os.path.join(FSDD_ROOT, "recordings")
SPEECH_COMMANDS_ROOT = os.path.normpath(os.path.join(FSDD_ROOT, "..", "speech_commands"))
"""The Speech Commands v0.02 test archive (12 classes, ``_background_noise_``)."""
SHARED_DATA = os.path.dirname(FSDD_ROOT)
"""``../shared/data``: the real corpora."""
