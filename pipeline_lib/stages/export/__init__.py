"""The export stage: INT8 quantisation, TFLite Micro parity, the device bundle."""
