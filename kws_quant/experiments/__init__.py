"""The experiment runners of kws_quant, the top layer: the absl command line (:mod:`.cli`), run directories and the
phase loop with resume (:mod:`.training`), and the KWS experiment behind ``python -m kws_quant.train``
(:mod:`.kws`). Nothing in the library layers imports them (``.importlinter``)."""
