print("LoadBench: not written yet")
