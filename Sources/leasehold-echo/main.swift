print("leasehold-echo: not built yet")
