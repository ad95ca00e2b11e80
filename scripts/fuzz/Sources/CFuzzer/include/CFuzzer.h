#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver, for an entry point of our own (SwiftPM names an executable's main).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
