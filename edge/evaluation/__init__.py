"""Reading labelled image sets and scoring detections: the MVTec-layout dataset reader and the metrics.

torch-free and runtime-free, at the bottom of the stack with the runtime and the contract, so detectors, export,
calibration and the tools all measure on the same data the same way.
"""
