"""What a pass measures: the data and its sample (:mod:`.data`, :mod:`.calibration`, :mod:`.example`), the
model loaded and fed (:mod:`.loading`, :mod:`.inputs`), one pass to a :class:`~.evaluation.Measurement`
(:mod:`.evaluation`, :mod:`.runners`, :mod:`.timing`), the weights' error (:mod:`.weights`), the layers kept
in FP32 (:mod:`.keep`), the hardware (:mod:`.hardware`) and a library's crash named (:mod:`.failures`)."""
