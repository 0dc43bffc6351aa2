// policy-probe IP PORT INTERVAL_US: opens a TCP connection to IP:PORT every INTERVAL_US (non-blocking connect,
// waited for at most INTERVAL_US), closes it (RST), and prints a line whenever the verdict changes:
//   <CLOCK_MONOTONIC ns of the attempt's start> ok|fail
// (the first attempt always prints). bench/policy.ts reads it to time a policy change from the apiserver's answer
// to the first probe that sees the new verdict. Runs until killed; stdout is line-buffered.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: policy-probe IP PORT INTERVAL_US\n");
    return 2;
  }
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
    fprintf(stderr, "policy-probe: bad address %s\n", argv[1]);
    return 2;
  }
  long interval = atol(argv[3]);
  setvbuf(stdout, NULL, _IOLBF, 0);
  int last = -1;
  struct linger lg = {1, 0};
  for (;;) {
    long long t0 = now_ns();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      perror("socket");
      return 1;
    }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) ok = 1;
    else if (errno == EINPROGRESS) {
      struct pollfd p = {fd, POLLOUT, 0};
      int ms = (int)(interval / 1000);
      if (ms < 1) ms = 1;
      if (poll(&p, 1, ms) == 1) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        ok = err == 0;
      }
    }
    close(fd);
    if (ok != last) {
      printf("%lld %s\n", t0, ok ? "ok" : "fail");
      last = ok;
    }
    long long spent = (now_ns() - t0) / 1000;
    if (spent < interval) usleep((useconds_t)(interval - spent));
  }
}
