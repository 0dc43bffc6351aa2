/*
 * bin/patu: patu's one executable, a small launcher in front of the Node code.
 *
 * Why C: a CNI plugin process is started for every pod event, and a bare Node start
 * costs ~30-60 ms here, while the reference bridge plugin finishes a whole ADD in
 * ~15 ms. So when CNI_COMMAND is set and the patu agent is running, this launcher
 * hands the request (CNI_* environment + stdin) to the agent over a unix socket and
 * prints its answer: no Node start at all. When the agent is not running (or dies
 * mid-request) it runs the plugin itself in Node, which does the same work and is
 * just slower. Without CNI_COMMAND it is the `patu` CLI: it execs Node straight away.
 *
 * Wire protocol (one request per connection; src/agent/cni-wire.ts):
 *   request:  "KEY=VALUE\n" for every CNI_* variable, "PATU_REQUEST_ID=<32 hex>\n", "\n",
 *             then the raw stdin bytes; EOF (shutdown SHUT_WR)
 *   response: " " when the agent starts the request, "<exit code>\n", then the plugin's
 *             stdout bytes; EOF
 *
 * No replays: when this launcher gives up waiting (receive timeout), it claims the
 * request id by creating <socket dir>/requests/<id> with O_EXCL before running the
 * request itself; the agent claims the same name before it starts a request. Whoever
 * creates the file runs the request. So a request the agent had not started is never
 * run by it later, and one the agent is running is not run twice (answer: code 11).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PATU_NODE
#define PATU_NODE "/usr/bin/node"
#endif
#ifndef PATU_HOME
#define PATU_HOME "/usr/lib/patu"
#endif
#define DEFAULT_AGENT_SOCKET "/run/patu/agent.sock"
/* The largest network config accepted (src/cni/netconf.ts MAX_CONFIG_BYTES is the same):
   beyond it the answer is code 7 naming the limit; code 5 means stdin could not be read. */
#define MAX_STDIN (16 << 20)
/* The agent refuses configs beyond 1 MB and CNI_* variables beyond 64 KiB (src/agent/cni-wire.ts
   MAX_STDIN_BYTES, MAX_HEADER_BYTES); such requests go to the local run, which answers them
   exactly as it answers any other (a 120,000-character CNI_CONTAINERID: code 4 naming it). */
#define MAX_AGENT_STDIN (1 << 20)
#define MAX_AGENT_HEADER (64 << 10)
/* The agent answers within its own deadline (20 s by default); this is the backstop. */
#define DEFAULT_AGENT_TIMEOUT_MS 60000

extern char **environ;

struct buf { char *data; size_t len, cap; };

static int buf_append(struct buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 8192;
    while (cap < b->len + n) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

/* 0 at EOF; -1 on a read or allocation error (errno set); -2 past `limit` bytes. */
static int read_all(int fd, struct buf *b, size_t limit) {
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (b->len + (size_t)n > limit) return -2;
    if (buf_append(b, chunk, (size_t)n) < 0) return -1;
  }
}

/* Writes all of p. To a socket it sends with MSG_NOSIGNAL: an agent that refuses a request and
   closes must not kill us with SIGPIPE. */
static int write_all(int fd, const char *p, size_t n, int is_socket) {
  while (n > 0) {
    ssize_t w = is_socket ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The directory holding dist/: next to this binary's real path, else the build-time default. */
static void patu_home(char *out, size_t size) {
  char exe[PATH_MAX];
  if (realpath("/proc/self/exe", exe)) {
    char probe[PATH_MAX];
    char *dir = dirname(dirname(exe)); /* <home>/bin/patu -> <home> */
    snprintf(probe, sizeof probe, "%s/dist/cni.cjs", dir);
    if (access(probe, R_OK) == 0) {
      snprintf(out, size, "%s", dir);
      return;
    }
  }
  snprintf(out, size, "%s", PATU_HOME);
}

/* Whether <home>/script exists (a build without the agent bundle falls back to the CLI's modules). */
static int has_script(const char *script) {
  char home[PATH_MAX], path[PATH_MAX + 64];
  patu_home(home, sizeof home);
  snprintf(path, sizeof path, "%s/%s", home, script);
  return access(path, R_OK) == 0;
}

/* Runs the Node side: the CNI plugin (script = dist/cni.cjs) or the CLI. */
static void exec_node(const char *script, const char *v8flag, int argc, char **argv) {
  char home[PATH_MAX], path[PATH_MAX + 64];
  patu_home(home, sizeof home);
  snprintf(path, sizeof path, "%s/%s", home, script);
  /* Extra CA certificates cost ~50 ms per Node start and patu never needs them. */
  unsetenv("NODE_EXTRA_CA_CERTS");
  char **args = calloc((size_t)argc + 4, sizeof *args);
  if (!args) _exit(100);
  int n = 0;
  args[n++] = (char *)"node";
  if (v8flag) args[n++] = (char *)v8flag;
  args[n++] = path;
  for (int i = 1; i < argc; i++) args[n++] = argv[i];
  /* A node shipped inside the tree (patu install --bundle-node: hosts without Node.js, such as
     k3s nodes set up by the DaemonSet) comes first; then the build host's, then PATH. */
  char bundled[PATH_MAX + 32];
  snprintf(bundled, sizeof bundled, "%s/node/bin/node", home);
  execv(bundled, args);
  execv(PATU_NODE, args);
  execvp("node", args);
  fprintf(stderr, "patu: cannot run node (%s or on PATH): %s\n", PATU_NODE, strerror(errno));
  _exit(127);
}

#define AGENT_GAVE_UP (-2)

/*
 * Claims request `id` for this process (see the header). Returns 1 when we may run it,
 * 0 when the agent has claimed it (it is running or ran it).
 */
static int claim_request(const char *sock_path, const char *id) {
  char dir[PATH_MAX], path[PATH_MAX + 64];
  snprintf(dir, sizeof dir, "%s", sock_path);
  snprintf(path, sizeof path, "%s/requests", dirname(dir));
  if (mkdir(path, 0700) < 0 && errno != EEXIST) return 1; /* no claims possible: the agent cannot have claimed either */
  snprintf(path + strlen(path), sizeof path - strlen(path), "/%s", id);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    close(fd);
    return 1;
  }
  return errno == EEXIST ? 0 : 1;
}

/*
 * Returns the plugin's exit code; -1 when the agent could not answer (run locally);
 * AGENT_GAVE_UP when the agent is still running it after our timeout (answered here).
 */
static int via_agent(const struct buf *in) {
  const char *sock_path = getenv("PATU_AGENT_SOCKET");
  if (!sock_path || !*sock_path) sock_path = DEFAULT_AGENT_SOCKET;
  if (in->len > MAX_AGENT_STDIN) return -1;
  size_t header = sizeof "PATU_REQUEST_ID=" + 32 + 2;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) == 0 && !strchr(*e, '\n')) header += strlen(*e) + 1;
  }
  if (header > MAX_AGENT_HEADER) return -1;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(sock_path) >= sizeof addr.sun_path) return -1;
  strcpy(addr.sun_path, sock_path);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    close(fd);
    return -1;
  }
  /* A wedged agent must not wedge the runtime forever: give up and run locally. */
  long timeout_ms = DEFAULT_AGENT_TIMEOUT_MS;
  const char *t = getenv("PATU_AGENT_TIMEOUT_MS"); /* tests */
  if (t && atol(t) > 0) timeout_ms = atol(t);
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  unsigned char raw[16];
  char id[sizeof raw * 2 + 1];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    close(fd);
    return -1;
  }
  for (size_t i = 0; i < sizeof raw; i++) snprintf(id + 2 * i, 3, "%02x", raw[i]);

  struct buf req = {0};
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) == 0 && !strchr(*e, '\n')) {
      if (buf_append(&req, *e, strlen(*e)) < 0 || buf_append(&req, "\n", 1) < 0) goto fail;
    }
  }
  if (buf_append(&req, "PATU_REQUEST_ID=", 16) < 0 || buf_append(&req, id, strlen(id)) < 0 ||
      buf_append(&req, "\n\n", 2) < 0)
    goto fail;
  if (in->len && buf_append(&req, in->data, in->len) < 0) goto fail;
  if (write_all(fd, req.data, req.len, 1) < 0) goto fail;
  shutdown(fd, SHUT_WR);

  struct buf resp = {0};
  int rc = read_all(fd, &resp, MAX_STDIN);
  if (rc != 0) {
    int timed_out = rc == -1 && (errno == EAGAIN || errno == EWOULDBLOCK);
    free(resp.data);
    close(fd);
    free(req.data);
    if (!timed_out || claim_request(sock_path, id)) return -1; /* run locally */
    printf("{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"the patu agent is still running this request after %ld ms; not running it a second time\",\"details\":\"retry\"}\n", timeout_ms);
    return AGENT_GAVE_UP;
  }
  close(fd);
  free(req.data);
  /* Leading spaces: the agent's start marker. */
  size_t skip = 0;
  while (skip < resp.len && resp.data[skip] == ' ') skip++;
  char *nl = resp.len > skip ? memchr(resp.data + skip, '\n', resp.len - skip) : NULL;
  if (!nl) {
    free(resp.data);
    return -1; /* agent closed without an answer (restarting, or handed it back): run locally */
  }
  int code = atoi(resp.data + skip);
  size_t off = (size_t)(nl - resp.data) + 1;
  write_all(STDOUT_FILENO, resp.data + off, resp.len - off, 0);
  free(resp.data);
  return code;
fail:
  close(fd);
  free(req.data);
  return -1;
}

int main(int argc, char **argv) {
  const char *command = getenv("CNI_COMMAND");
  if (!command || !*command) {
    /* The agent and split mode's manager live for months on small nodes: a 1 MB young
       generation instead of V8's 16 MB keeps the agent's RSS at 1,000 services at kube-proxy's
       (bench/k8s-proxy.ts: 87.9 -> 74.2 MB) for a little more GC work. Short CLI runs keep
       V8's default. */
    int daemon = argc > 1 && (strcmp(argv[1], "agent") == 0 || strcmp(argv[1], "manager") == 0);
    /* Both run from the agent's bundle (scripts/build.sh: less RSS than the module tree; the
       manager's code is a chunk behind a dynamic import, which the default agent never
       loads); a tree built without it still runs the CLI's modules. */
    exec_node(daemon && has_script("dist/agent/index.js") ? "dist/agent/index.js" : "dist/src/cli/index.js",
              daemon ? "--max-semi-space-size=1" : NULL, argc, argv);
  }

  /* Read stdin once: it goes either to the agent or, through a pipe, to Node. */
  struct buf in = {0};
  int got = strcmp(command, "VERSION") != 0 ? read_all(STDIN_FILENO, &in, MAX_STDIN) : 0;
  if (got == -2) {
    printf("{\"cniVersion\":\"1.1.0\",\"code\":7,\"msg\":\"invalid network config: (stdin): the config is larger than the 16 MiB limit\",\"details\":\"(stdin)\"}\n");
    return 1;
  }
  if (got < 0) {
    printf("{\"cniVersion\":\"1.1.0\",\"code\":5,\"msg\":\"reading the network config from stdin failed: %s\",\"details\":\"stdin\"}\n", strerror(errno));
    return 1;
  }
  if (!getenv("PATU_NO_AGENT")) {
    int code = via_agent(&in);
    if (code == AGENT_GAVE_UP) return 1;
    if (code >= 0) return code;
  }

  /* No agent: hand the bytes we already read to Node as its stdin, through an
   * in-memory file, and become the Node process (exit status passes straight through). */
  int mem = memfd_create("patu-cni-stdin", MFD_CLOEXEC);
  if (mem < 0 || write_all(mem, in.data ? in.data : "", in.len, 0) < 0 || lseek(mem, 0, SEEK_SET) < 0 ||
      dup2(mem, STDIN_FILENO) < 0) {
    printf("{\"cniVersion\":\"1.1.0\",\"code\":5,\"msg\":\"passing stdin to the plugin failed: %s\",\"details\":\"\"}\n", strerror(errno));
    return 1;
  }
  /* The runtime's environment comes along (libcni passes its own), and Node 20's ICU
     dies of SIGSEGV at start-up when LANG or LC_ALL is a path-like value of 12 or more
     characters. The plugin formats nothing by locale: pin it. */
  setenv("LC_ALL", "C", 1);
  exec_node("dist/cni.cjs", NULL, 1, argv);
  return 127;
}
