// connect()+close() loop for bench/service-lb.ts. C, not Node, so the
// per-connect cost measured is the kernel's (translation included), not the
// runtime's. Closes with SO_LINGER 0 (RST): no TIME_WAIT, so a run never
// exhausts ephemeral ports and runs stay comparable.
//   connect-rate IP PORT|FIRST-LAST DURATION_MS MAX_CONNECTS
// With FIRST-LAST each connect goes to the next port of the range, round robin
// (bench/nodeport.ts: every NodePort service in turn, so a rule set searched in
// order is measured at its average position, not at a lucky one).
// prints {"count":N,"errors":E,"ns":T,"p50_ns":..,"p99_ns":..}
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s IP PORT|FIRST-LAST DURATION_MS MAX_CONNECTS\n", argv[0]);
		return 2;
	}
	char *dash = strchr(argv[2], '-');
	long first = atol(argv[2]), last = dash ? atol(dash + 1) : first;
	if (first < 1 || last > 65535 || last < first) {
		fprintf(stderr, "bad port or range %s\n", argv[2]);
		return 2;
	}
	struct sockaddr_in sa = { .sin_family = AF_INET };
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	uint64_t duration = (uint64_t)atoll(argv[3]) * 1000000ull;
	long max = atol(argv[4]);
	uint64_t *lat = calloc((size_t)max, sizeof(*lat));
	if (!lat)
		return 2;
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	long count = 0, errors = 0, port = first;
	uint64_t start = now_ns(), end = start;
	while (count < max && (end = now_ns()) - start < duration) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) {
			perror("socket");
			return 1;
		}
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		sa.sin_port = htons((uint16_t)port);
		port = port == last ? first : port + 1;
		uint64_t t0 = now_ns();
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			errors++;
		else
			lat[count++] = now_ns() - t0;
		close(fd);
		if (errors > 1000)
			break;
	}
	end = now_ns();
	qsort(lat, (size_t)count, sizeof(*lat), cmp);
	uint64_t p50 = count ? lat[count / 2] : 0, p99 = count ? lat[(count * 99) / 100] : 0;
	printf("{\"count\":%ld,\"errors\":%ld,\"ns\":%llu,\"p50_ns\":%llu,\"p99_ns\":%llu}\n", count, errors,
	       (unsigned long long)(end - start), (unsigned long long)p50, (unsigned long long)p99);
	return 0;
}
