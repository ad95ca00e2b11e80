print("CodecBench: not written yet")
