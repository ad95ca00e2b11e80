// epoll is not in Swift's Glibc module; this target only exposes <sys/epoll.h>.
#include "CEpoll.h"
