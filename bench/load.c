/*
 * load.c - the benchmark's load client for the "GOT:" echo protocol.
 *
 * A server under test answers every chunk it reads with "GOT:" + chunk. This client is a
 * single-threaded epoll loop in C, so that it costs less per message than a Deno server
 * and the server stays the bottleneck. bench/run.ts builds it with `cc -O2` and reads the
 * `RESULT {json}` lines it prints on stdout, one per server.
 *
 * Two servers at once (--port A,B --pid A,B): the client opens --conns connections to
 * each and drives them in turns, --slice ms each (A, B, A, B, ...), so that any noise on
 * the machine lasting longer than a slice hits both servers alike. A turn ends when every
 * reply to what was sent in it has arrived, so the two servers never run at the same time.
 *
 * Every connection sends a continuous byte stream whose byte k is 'a' + k % 26. The
 * payload therefore never contains 'G', so in the reply every 'G' starts a "GOT:" prefix
 * and every other byte must be the next byte of the stream that was sent: replies are
 * checked byte for byte with memchr + memcmp.
 *
 * Modes (all start by connecting every connection, at most --ramp at a time, and doing
 * one 64-byte round trip on it, so each one is known to be accepted and served):
 *   pingpong  every connection of the server whose turn it is sends --size bytes and
 *             waits for the whole reply before sending again (closed loop). After --warmup
 *             s of turns, measures --duration s of turns per server: round trips per
 *             second and exact latency percentiles.
 *   bulk      every connection of the server whose turn it is writes --size-byte chunks
 *             whenever its socket is writable and reads everything back: echoed MB/s.
 *   idle      (one server) holds the connections for --hold s, reads the server's VmRSS
 *             (--pid), then does one more round trip on every connection to show that
 *             all are still served.
 *   lines     a line protocol instead: the server answers every line with the same line.
 *             The stream is lines of --size bytes, the last of each a '\n' (the setup
 *             round trip is one line); every connection sends --depth lines in one write
 *             and waits for all their replies before sending again, as pingpong does.
 *             Replies are checked byte for byte against what was sent.
 *
 * Costs it reports, per server over its turns: client_busy_pct (share of the turn this
 * client spent handling events; with --spin it polls epoll without sleeping, so its CPU
 * is 100 % by construction and busy % is the figure to read), server_cpu_pct. And for the
 * whole run, the outside noise: cpu0_foreign_pct / cpu1_foreign_pct (CPU time other
 * processes took on CPU 0, the servers', and CPU 1, the client's), server_runq_pct /
 * client_runq_pct (time they were runnable but not running), steal_pct.
 *
 * Exit status: 0 no errors, 3 errors counted, 2 usage or setup failure.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { PINGPONG, BULK, IDLE, LINES };
enum state { UNUSED, CONNECTING, SETUP, READY, DEAD };
enum error_kind { E_CONNECT, E_RESET, E_EOF, E_BAD, E_TIMEOUT, E_OTHER, E_KINDS };
static const char *ERROR_NAMES[E_KINDS] = {"connect", "reset", "eof", "bad", "timeout", "other"};

#define SETUP_SIZE 64
#define READ_SIZE (256 * 1024)
#define MAX_EVENTS 512
#define MAX_SERVERS 2
#define NONE (-1)

struct conn {
  int fd;
  uint8_t server;      /* which server it is connected to */
  uint8_t state;
  uint8_t prefix;      /* how many bytes of "GOT:" have been seen of the current prefix */
  uint8_t need_prefix; /* the next byte must start a "GOT:" (start of a reply) */
  uint8_t want_out;    /* EPOLLOUT is registered */
  uint64_t tx;         /* stream bytes written */
  uint64_t goal;       /* stream bytes to write before the current reply is complete */
  uint64_t rx;         /* payload bytes received and checked */
  uint64_t sent_ns;    /* when the current message was sent */
};

/* What one server did in its measured turns. */
struct server {
  int port, pid;
  struct sockaddr_in addr;
  uint64_t turn_ns;           /* measured time it had the turn */
  uint64_t busy_ns;           /* client time spent on events during those turns */
  long long ticks;            /* its CPU time in clock ticks during those turns */
  uint64_t round_trips, payload, prefixes;
  uint64_t *latencies;
  size_t latency_count, latency_cap;
  long rss_before_kb, rss_held_kb;
  int served;
};

static struct {
  enum mode mode;
  const char *host;
  int conns, size, ramp, spin, depth;
  double warmup, duration, slice_ms, hold, timeout;
} opt = {PINGPONG, "127.0.0.1", 1, 64, 200, 0, 16, 1, 3, 250, 2, 10};

static struct server servers[MAX_SERVERS];
static int server_count;
static int total_conns; /* server_count * opt.conns; conns[i] belongs to server i / opt.conns */

static int ep;
static struct conn *conns;
static uint8_t *pattern; /* the stream from byte 0, long enough for any write or compare */
static size_t period = 26; /* pattern + k % period is the stream from byte k */
static uint8_t rbuf[READ_SIZE];

static int next_to_open, in_setup, ready_count;
static int turn = NONE;     /* the server whose connections may send now */
static int counting = NONE; /* the server whose replies count now: its measured turn and the
                               pause after it */
static uint64_t busy_ns;    /* time spent handling events, all turns */
static uint64_t errors[E_KINDS];
static char first_error[160];

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "load: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

/* --- the server processes and the CPUs, read from /proc ---------------------------- */

static long rss_kb(int pid) {
  char path[64], line[256];
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

/* utime + stime of a whole process, in clock ticks. */
static long long process_ticks(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may contain spaces */
  if (!p) return -1;
  unsigned long long utime, stime;
  /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
    return -1;
  return (long long)(utime + stime);
}

/* Nanoseconds the main thread of `pid` (0: this process) was runnable but had no CPU. */
static long long runq_ns(int pid) {
  char path[64];
  long long run, wait;
  if (pid) snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
  else snprintf(path, sizeof path, "/proc/self/schedstat");
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  int ok = fscanf(f, "%lld %lld", &run, &wait) == 2;
  fclose(f);
  return ok ? wait : 0;
}

static long long all_servers_runq_ns(void) {
  long long sum = 0;
  for (int s = 0; s < server_count; s++) sum += runq_ns(servers[s].pid);
  return sum;
}

static long long all_servers_ticks(void) {
  long long sum = 0;
  for (int s = 0; s < server_count; s++) sum += process_ticks(servers[s].pid);
  return sum;
}

/* Busy and stolen clock ticks of CPU 0 and CPU 1, from /proc/stat. */
static void cpu_ticks(long long busy[2], long long steal[2]) {
  char line[256];
  FILE *f = fopen("/proc/stat", "r");
  busy[0] = busy[1] = steal[0] = steal[1] = 0;
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    int cpu;
    long long user, nice, sys, idle, iowait, irq, softirq, st;
    if (sscanf(line, "cpu%d %lld %lld %lld %lld %lld %lld %lld %lld", &cpu, &user, &nice, &sys,
               &idle, &iowait, &irq, &softirq, &st) == 9 &&
        cpu >= 0 && cpu < 2) {
      busy[cpu] = user + nice + sys + irq + softirq;
      steal[cpu] = st;
    }
  }
  fclose(f);
}

/* --- connections ------------------------------------------------------------------- */

static void watch(struct conn *c, int op, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  c->want_out = (events & EPOLLOUT) != 0;
}

static void note_error(enum error_kind kind, int conn, const char *detail) {
  errors[kind]++;
  if (!first_error[0])
    snprintf(first_error, sizeof first_error, "%s on connection %d: %s", ERROR_NAMES[kind], conn,
             detail);
}

static void fail(struct conn *c, enum error_kind kind, const char *detail) {
  note_error(kind, (int)(c - conns), detail);
  if (c->state == CONNECTING || c->state == SETUP) in_setup--;
  if (c->state == READY) ready_count--;
  c->state = DEAD;
  close(c->fd);
  c->fd = -1;
}

static void open_next(void) {
  while (in_setup < opt.ramp && next_to_open < total_conns) {
    struct conn *c = &conns[next_to_open++];
    c->server = (uint8_t)((c - conns) / opt.conns);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s (is the open-file limit high enough?)", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->need_prefix = 1;
    in_setup++;
    struct sockaddr_in *addr = &servers[c->server].addr;
    if (connect(c->fd, (struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) {
      fail(c, E_CONNECT, strerror(errno));
      continue;
    }
    watch(c, EPOLL_CTL_ADD, EPOLLOUT);
  }
}

/* Writes what is left of the current message; registers EPOLLOUT if the socket is full. */
static void flush(struct conn *c) {
  while (c->tx < c->goal) {
    ssize_t n = write(c->fd, pattern + c->tx % period, c->goal - c->tx);
    if (n < 0) {
      if (errno == EAGAIN) {
        if (!c->want_out) watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
        return;
      }
      fail(c, errno == ECONNRESET || errno == EPIPE ? E_RESET : E_OTHER, strerror(errno));
      return;
    }
    c->tx += (uint64_t)n;
  }
  if (c->want_out) watch(c, EPOLL_CTL_MOD, EPOLLIN);
}

/* What one connection sends per round trip, and in the setup round trip. */
static int message_size(void) { return opt.mode == LINES ? opt.size * opt.depth : opt.size; }
static int setup_size(void) { return opt.mode == LINES ? opt.size : SETUP_SIZE; }

static void send_message(struct conn *c, int size) {
  c->goal = c->tx + (uint64_t)size;
  c->need_prefix = 1;
  c->sent_ns = now_ns();
  flush(c);
}

/* Bulk: one chunk whenever the socket is writable. */
static void bulk_write(struct conn *c) {
  ssize_t n = write(c->fd, pattern + c->tx % period, (size_t)opt.size);
  if (n < 0) {
    if (errno != EAGAIN)
      fail(c, errno == ECONNRESET || errno == EPIPE ? E_RESET : E_OTHER, strerror(errno));
    return;
  }
  c->tx += (uint64_t)n;
  c->goal = c->tx;
}

/* Checks n received bytes against the stream; returns the payload byte count, or -1. */
static long check(struct conn *c, const uint8_t *data, size_t n) {
  static const char PREFIX[] = "GOT:";
  if (opt.mode == LINES) { /* no prefixes: the reply is the stream itself */
    if (c->rx + n > c->tx) return fail(c, E_BAD, "more bytes than were sent"), -1;
    if (memcmp(data, pattern + c->rx % period, n) != 0)
      return fail(c, E_BAD, "reply differs from the lines sent"), -1;
    c->rx += n;
    return (long)n;
  }
  size_t i = 0;
  long payload = 0;
  while (i < n) {
    if (c->prefix > 0) {
      if (data[i] != PREFIX[c->prefix]) return fail(c, E_BAD, "broken GOT: prefix"), -1;
      c->prefix = (c->prefix + 1) & 3;
      i++;
      continue;
    }
    if (data[i] == 'G') {
      if (counting == c->server) servers[c->server].prefixes++;
      c->prefix = 1;
      c->need_prefix = 0;
      i++;
      continue;
    }
    if (c->need_prefix) return fail(c, E_BAD, "reply does not start with GOT:"), -1;
    const uint8_t *g = memchr(data + i, 'G', n - i);
    size_t end = g ? (size_t)(g - data) : n, len = end - i;
    if (c->rx + len > c->tx) return fail(c, E_BAD, "more bytes than were sent"), -1;
    if (memcmp(data + i, pattern + c->rx % period, len) != 0)
      return fail(c, E_BAD, "payload differs from what was sent"), -1;
    c->rx += len;
    payload += (long)len;
    i = end;
  }
  return payload;
}

static void record_latency(struct server *s, uint64_t ns) {
  if (s->latency_count == s->latency_cap) {
    s->latency_cap = s->latency_cap ? s->latency_cap * 2 : 1 << 16;
    s->latencies = realloc(s->latencies, s->latency_cap * sizeof *s->latencies);
    if (!s->latencies) die("out of memory");
  }
  s->latencies[s->latency_count++] = ns;
}

/* The reply to the current message is complete. */
static void replied(struct conn *c) {
  if (c->state == SETUP) {
    c->state = READY;
    in_setup--;
    ready_count++;
    watch(c, EPOLL_CTL_MOD, EPOLLIN);
    open_next();
    return;
  }
  if (counting == c->server) {
    struct server *s = &servers[c->server];
    s->round_trips++;
    record_latency(s, now_ns() - c->sent_ns);
  }
  if (turn == c->server) send_message(c, message_size());
}

static void on_readable(struct conn *c) {
  ssize_t n = read(c->fd, rbuf, sizeof rbuf);
  if (n == 0) return fail(c, E_EOF, "server closed the connection");
  if (n < 0) {
    if (errno == EAGAIN) return;
    return fail(c, errno == ECONNRESET ? E_RESET : E_OTHER, strerror(errno));
  }
  long payload = check(c, rbuf, (size_t)n);
  if (payload < 0) return;
  if (counting == c->server) servers[c->server].payload += (uint64_t)payload;
  if (opt.mode == BULK && c->state == READY) return;
  if (c->goal > c->rx) return;
  if (c->state != SETUP && c->state != READY) return;
  replied(c);
}

static void on_event(struct conn *c, uint32_t events) {
  if (c->state == DEAD) return;
  if (c->state == CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return fail(c, E_CONNECT, strerror(err));
    c->state = SETUP;
    watch(c, EPOLL_CTL_MOD, EPOLLIN);
    send_message(c, setup_size());
    return;
  }
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
  if (c->state == DEAD || !(events & EPOLLOUT)) return;
  if (opt.mode == BULK && c->state == READY && turn == c->server) bulk_write(c);
  else flush(c);
}

/* --- the loop ---------------------------------------------------------------------- */

/* Handles events until `until` (ns) or until done() says so; opens connections still due. */
static void loop_until(uint64_t until, int (*done)(void)) {
  struct epoll_event events[MAX_EVENTS];
  uint64_t last_scan = now_ns();
  for (;;) {
    if (next_to_open < total_conns) open_next();
    uint64_t t0 = now_ns();
    if (t0 >= until || (done && done())) return;
    int wait_ms = opt.spin ? 0 : (int)((until - t0) / 1000000u + 1);
    if (wait_ms > 50) wait_ms = 50;
    int n = epoll_wait(ep, events, MAX_EVENTS, wait_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    uint64_t woke = opt.spin ? t0 : now_ns(); /* a blocking wait is idle time, a poll is not */
    for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
    uint64_t t1 = now_ns();
    if (n > 0) busy_ns += t1 - woke;
    if (t1 - last_scan > 100000000u) { /* every 100 ms: replies that never came */
      last_scan = t1;
      uint64_t limit = (uint64_t)(opt.timeout * 1e9);
      for (int i = 0; i < next_to_open; i++) {
        struct conn *c = &conns[i];
        if ((c->state == SETUP || c->state == READY) && c->goal > c->rx &&
            t1 - c->sent_ns > limit && opt.mode != BULK)
          fail(c, E_TIMEOUT, "no reply in time");
      }
    }
  }
}

static int setup_done(void) { return in_setup == 0 && next_to_open == total_conns; }

/* Every reply to what was sent has arrived (on every connection of every server). */
static int all_replied(void) {
  for (int i = 0; i < total_conns; i++)
    if (conns[i].state == READY && (conns[i].goal > conns[i].rx || conns[i].tx > conns[i].rx))
      return 0;
  return 1;
}

/* Gives server `s` the turn: its connections start sending. */
static void start_turn(int s) {
  turn = s;
  for (int i = s * opt.conns; i < (s + 1) * opt.conns; i++) {
    struct conn *c = &conns[i];
    if (c->state != READY) continue;
    if (opt.mode != BULK) send_message(c, message_size());
    else watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
  }
}

/* Ends the turn: no new messages; bulk writers stop asking for EPOLLOUT. */
static void end_turn(void) {
  int s = turn;
  turn = NONE;
  if (opt.mode != BULK) return;
  for (int i = s * opt.conns; i < (s + 1) * opt.conns; i++)
    if (conns[i].state == READY && conns[i].want_out) watch(&conns[i], EPOLL_CTL_MOD, EPOLLIN);
}

/*
 * One turn for server s: its connections send for `slice_ns`, then stop, and the turn
 * ends when every reply has arrived. A turn's figures are what was sent in it over its
 * whole length, the drain included: a saturated server works through the drain at the
 * same rate, so this measures that rate whether replies queue up (bulk) or not (1 conn).
 */
static void one_turn(int s, uint64_t slice_ns, int measured) {
  struct server *srv = &servers[s];
  counting = measured ? s : NONE;
  long long ticks0 = measured ? process_ticks(srv->pid) : 0;
  uint64_t busy0 = busy_ns, t0 = now_ns();
  start_turn(s);
  loop_until(t0 + slice_ns, NULL);
  end_turn();
  loop_until(now_ns() + (uint64_t)(opt.timeout * 1e9), all_replied);
  if (!all_replied()) note_error(E_TIMEOUT, -1, "replies still missing after a turn");
  if (measured) {
    srv->turn_ns += now_ns() - t0;
    srv->busy_ns += busy_ns - busy0;
    srv->ticks += process_ticks(srv->pid) - ticks0;
  }
  counting = NONE;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double percentile_us(struct server *s, double p) {
  if (s->latency_count == 0) return 0;
  size_t i = (size_t)(p * (double)(s->latency_count - 1) + 0.5);
  return (double)s->latencies[i] / 1000.0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: load --port P[,P2] [--pid PID[,PID2]] [--mode pingpong|bulk|idle|lines]\n"
          "            [--conns N] [--size BYTES] [--depth LINES] [--warmup S] [--duration S]\n"
          "            [--slice MS] [--hold S]\n"
          "            [--spin] [--ramp N] [--timeout S] [--host 127.0.0.1]\n");
  exit(2);
}

/* Parses "A" or "A,B" into up to MAX_SERVERS integers; returns how many. */
static int parse_list(const char *text, int out[MAX_SERVERS]) {
  int n = 0;
  for (const char *p = text; *p && n < MAX_SERVERS;) {
    out[n++] = atoi(p);
    p = strchr(p, ',');
    if (!p) break;
    p++;
  }
  return n;
}

int main(int argc, char **argv) {
  int ports[MAX_SERVERS] = {0}, pids[MAX_SERVERS] = {0}, pid_count = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--spin")) { opt.spin = 1; continue; }
    if (!v) usage();
    i++;
    if (!strcmp(a, "--port")) server_count = parse_list(v, ports);
    else if (!strcmp(a, "--pid")) pid_count = parse_list(v, pids);
    else if (!strcmp(a, "--host")) opt.host = v;
    else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
    else if (!strcmp(a, "--size")) opt.size = atoi(v);
    else if (!strcmp(a, "--depth")) opt.depth = atoi(v);
    else if (!strcmp(a, "--warmup")) opt.warmup = atof(v);
    else if (!strcmp(a, "--duration")) opt.duration = atof(v);
    else if (!strcmp(a, "--slice")) opt.slice_ms = atof(v);
    else if (!strcmp(a, "--hold")) opt.hold = atof(v);
    else if (!strcmp(a, "--ramp")) opt.ramp = atoi(v);
    else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
    else if (!strcmp(a, "--mode")) {
      if (!strcmp(v, "pingpong")) opt.mode = PINGPONG;
      else if (!strcmp(v, "bulk")) opt.mode = BULK;
      else if (!strcmp(v, "idle")) opt.mode = IDLE;
      else if (!strcmp(v, "lines")) opt.mode = LINES;
      else usage();
    } else usage();
  }
  if (server_count < 1 || opt.conns <= 0 || opt.size <= 0 || opt.size > (1 << 20) ||
      opt.depth <= 0 || (long)opt.size * opt.depth > (1 << 20) ||
      opt.ramp <= 0 || opt.slice_ms <= 0 || (pid_count && pid_count != server_count))
    usage();
  for (int s = 0; s < server_count; s++)
    if (ports[s] <= 0 || ports[s] > 65535) usage();
  if (opt.mode == IDLE && server_count != 1) die("idle mode takes one server");
  if (strcmp(opt.host, "127.0.0.1") != 0) die("refusing to load anything but 127.0.0.1");
  total_conns = server_count * opt.conns;

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)total_conns + 16)
    die("need %d open files, the hard limit is %lu: raise it (ulimit -Hn %d as root)",
        total_conns + 16, (unsigned long)rl.rlim_max, total_conns + 64);

  if (opt.mode == LINES) period = (size_t)opt.size;
  size_t pattern_len = READ_SIZE + (size_t)message_size() + period;
  pattern = malloc(pattern_len);
  conns = calloc((size_t)total_conns, sizeof *conns);
  if (!pattern || !conns) die("out of memory");
  for (size_t i = 0; i < pattern_len; i++) pattern[i] = (uint8_t)('a' + i % 26);
  if (opt.mode == LINES)
    for (size_t i = 0; i < pattern_len; i++)
      pattern[i] = i % period == period - 1 ? '\n' : (uint8_t)('a' + i % period % 26);
  for (int s = 0; s < server_count; s++) {
    servers[s].port = ports[s];
    servers[s].pid = pids[s];
    servers[s].addr.sin_family = AF_INET;
    servers[s].addr.sin_port = htons((uint16_t)ports[s]);
    inet_pton(AF_INET, opt.host, &servers[s].addr.sin_addr);
    servers[s].rss_before_kb = pids[s] ? rss_kb(pids[s]) : -1;
  }
  ep = epoll_create1(EPOLL_CLOEXEC);

  uint64_t setup_start = now_ns();
  open_next();
  loop_until(setup_start + 60 * 1000000000ull, setup_done);
  double setup_s = (double)(now_ns() - setup_start) / 1e9;
  if (!setup_done()) note_error(E_TIMEOUT, -1, "setup took over 60 s");

  double window_s = 0;
  long long foreign_ticks[2] = {0, 0}, steal_ticks = 0, server_runq = 0, client_runq = 0;
  uint64_t client_cpu = 0;
  if (opt.mode == IDLE) {
    struct server *s = &servers[0];
    loop_until(now_ns() + (uint64_t)(opt.hold * 1e9), NULL);
    s->rss_held_kb = s->pid ? rss_kb(s->pid) : -1;
    for (int i = 0; i < total_conns; i++)
      if (conns[i].state == READY) send_message(&conns[i], SETUP_SIZE);
    loop_until(now_ns() + (uint64_t)(opt.timeout * 1e9), all_replied);
    for (int i = 0; i < total_conns; i++)
      if (conns[i].state == READY && conns[i].rx == conns[i].tx) s->served++;
  } else {
    uint64_t slice_ns = (uint64_t)(opt.slice_ms * 1e6);
    int warm_turns = (int)(opt.warmup * 1e3 / opt.slice_ms / server_count + 0.5);
    int turns = (int)(opt.duration * 1e3 / opt.slice_ms + 0.5);
    if (turns < 1) turns = 1;
    for (int k = 0; k < warm_turns; k++)
      for (int s = 0; s < server_count; s++) one_turn(s, slice_ns, 0);
    long long cpus0[2], cpus1[2], steal0[2], steal1[2];
    long long servers0 = all_servers_ticks(), runq0 = all_servers_runq_ns(), my_runq0 = runq_ns(0);
    uint64_t cpu0 = cpu_ns(), t0 = now_ns();
    cpu_ticks(cpus0, steal0);
    for (int k = 0; k < turns; k++)
      for (int s = 0; s < server_count; s++) one_turn(s, slice_ns, 1);
    cpu_ticks(cpus1, steal1);
    window_s = (double)(now_ns() - t0) / 1e9;
    client_cpu = cpu_ns() - cpu0;
    long long server_ticks = all_servers_ticks() - servers0;
    server_runq = all_servers_runq_ns() - runq0;
    client_runq = runq_ns(0) - my_runq0;
    /* Work on each CPU by anybody but the servers (CPU 0) and this client (its CPU). */
    int my_cpu = sched_getcpu();
    double tick_ns = 1e9 / (double)sysconf(_SC_CLK_TCK);
    long long client_ticks = (long long)((double)client_cpu / tick_ns);
    foreign_ticks[0] = cpus1[0] - cpus0[0] - server_ticks - (my_cpu == 0 ? client_ticks : 0);
    foreign_ticks[1] = my_cpu == 1 ? cpus1[1] - cpus0[1] - client_ticks : 0;
    steal_ticks = steal1[0] - steal0[0] + steal1[1] - steal0[1];
  }
  int alive = 1;
  for (int s = 0; s < server_count; s++)
    if (servers[s].pid && rss_kb(servers[s].pid) < 0) alive = 0, errors[E_OTHER]++;
  for (int i = 0; i < total_conns; i++)
    if (conns[i].fd > 0) close(conns[i].fd);

  uint64_t total_errors = 0;
  for (int k = 0; k < E_KINDS; k++) total_errors += errors[k];
  const char *modes[] = {"pingpong", "bulk", "idle", "lines"};
  double tick_ns = 1e9 / (double)sysconf(_SC_CLK_TCK);
  for (int k = 0; k < server_count; k++) {
    struct server *s = &servers[k];
    printf("RESULT {\"server\":%d,\"mode\":\"%s\",\"conns\":%d,\"size\":%d,\"setup_s\":%.2f", k,
           modes[opt.mode], opt.conns, opt.size, setup_s);
    if (opt.mode == IDLE) {
      printf(",\"rss_before_kb\":%ld,\"rss_held_kb\":%ld,\"rss_per_conn_B\":%.0f,\"served\":%d",
             s->rss_before_kb, s->rss_held_kb,
             ready_count > 0 ? (double)(s->rss_held_kb - s->rss_before_kb) * 1024.0 / ready_count
                             : 0.0,
             s->served);
    } else {
      double turn_s = (double)s->turn_ns / 1e9;
      qsort(s->latencies, s->latency_count, sizeof *s->latencies, cmp_u64);
      double sum = 0;
      for (size_t i = 0; i < s->latency_count; i++) sum += (double)s->latencies[i];
      double window_ns = window_s * 1e9;
      printf(",\"turn_s\":%.3f,\"round_trips\":%llu,\"rps\":%.0f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
             "\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,\"payload_MBps\":%.1f,"
             "\"avg_reply_B\":%.0f,\"client_busy_pct\":%.1f,\"server_cpu_pct\":%.1f",
             turn_s, (unsigned long long)s->round_trips, (double)s->round_trips / turn_s,
             percentile_us(s, 0.50), percentile_us(s, 0.90), percentile_us(s, 0.99),
             percentile_us(s, 1.0),
             s->latency_count ? sum / (double)s->latency_count / 1000.0 : 0.0,
             (double)s->payload / turn_s / 1e6,
             s->prefixes ? (double)s->payload / (double)s->prefixes : 0.0,
             (double)s->busy_ns / (double)s->turn_ns * 100,
             (double)s->ticks * tick_ns / (double)s->turn_ns * 100);
      if (opt.mode == LINES)
        printf(",\"depth\":%d,\"lines_per_s\":%.0f", opt.depth,
               (double)s->round_trips * opt.depth / turn_s);
      printf(",\"window_s\":%.3f,\"client_cpu_pct\":%.1f,\"cpu0_foreign_pct\":%.1f,"
             "\"cpu1_foreign_pct\":%.1f,\"server_runq_pct\":%.1f,\"client_runq_pct\":%.1f,"
             "\"steal_pct\":%.1f",
             window_s, (double)client_cpu / window_ns * 100,
             foreign_ticks[0] > 0 ? (double)foreign_ticks[0] * tick_ns / window_ns * 100 : 0.0,
             foreign_ticks[1] > 0 ? (double)foreign_ticks[1] * tick_ns / window_ns * 100 : 0.0,
             (double)server_runq / window_ns * 100, (double)client_runq / window_ns * 100,
             (double)steal_ticks * tick_ns / window_ns * 100);
    }
    printf(",\"server_alive\":%d,\"errors\":%llu", alive, (unsigned long long)total_errors);
    for (int e = 0; e < E_KINDS; e++)
      if (errors[e]) printf(",\"err_%s\":%llu", ERROR_NAMES[e], (unsigned long long)errors[e]);
    printf(",\"first_error\":\"%s\"}\n", first_error);
  }
  return total_errors ? 3 : 0;
}
