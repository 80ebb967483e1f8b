"""The judge: paired statistics (:mod:`.stats`, :mod:`.metrics`), the gates that return a verdict
(:mod:`.gates`, :mod:`.verdict`), the baseline file's format (:mod:`.baselines`) and the FP32 reference's
sanity checks (:mod:`.sanity`). Nothing here knows pytest: the plugin turns verdicts into outcomes."""
