// Only the header matters: the driver comes from -sanitize=fuzzer.
