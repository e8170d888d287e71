"""The experiment runners of asr_ext, the top layer: the RNN-T experiment behind ``python -m asr_ext.train``
(:mod:`.asr`) and its quantization-method phases (:mod:`.methods`). Nothing in asr_ext's library layers imports
them (``.importlinter``)."""
