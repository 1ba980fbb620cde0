/* vm-refresh ID EPOCH SEED HOSTKEY: makes a guest restored from a snapshot (or forked) a VM
 * of its own. /etc/vm-id and the hostname become ID, the clock steps to EPOCH (the host's
 * time, seconds; a restored clock is the snapshot's), SEED (host randomness, hex, 8..256
 * bytes) is credited to the kernel's pool and the CRNG reseeded at once (writing to
 * /dev/urandom only mixes the bytes in, and microvm has no vmgenid to make the kernel
 * reseed by itself), the SSH host key becomes HOSTKEY (a dropbear key file, base64) and the
 * listener is restarted with it and the new banner 0.2 s later (sshd-loop; open sessions
 * stay). When the disk was grown under the restored guest, vm-grow runs in the background.
 *
 * vm-refresh --serve: the same, asked by the service on the virtio-serial port
 * vmsvc.refresh (started by init, it waits there, and lives on in a saved guest). A line
 * `refresh ID EPOCH SEED HOSTKEY NOREPORT` is answered `ok` or `error REASON` (NOREPORT 1:
 * the guest also stops reporting free pages, see src/guest/cmd.rs `refresh`); `ping` is
 * answered `pong`. A restored copy is refreshed this way without running a command: a
 * restored TCG guest translates every code path anew, and the runner's fork and exec of
 * the same refresh cost it ~120 ms before its first answer.
 *
 * One static program rather than a shell script for the same reason: each program a script
 * starts (date, base64, mv, ...) cost a restored guest 10-20 ms. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HOST_KEY "/etc/dropbear/dropbear_ed25519_host_key"

/* The reason of the last failure (the port's answer; stderr for the command line). */
static char why[160];

static int fail(const char *what) {
    snprintf(why, sizeof why, "%s: %s", what, strerror(errno));
    return 1;
}

static int usage(const char *what) {
    snprintf(why, sizeof why, "%s", what);
    return 2;
}

static int write_file(const char *path, const void *data, size_t len, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return -1;
    ssize_t n = write(fd, data, len);
    int saved = errno;
    if (close(fd) != 0 || n != (ssize_t)len) {
        errno = n < 0 ? saved : (errno ? errno : EIO);
        return -1;
    }
    return 0;
}

static int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int b64(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes base64 (padding optional) into out; returns its length or -1. */
static long unbase64(const char *in, unsigned char *out, size_t cap) {
    unsigned long acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *in && *in != '='; in++) {
        int v = b64(*in);
        if (v < 0) return -1;
        acc = acc << 6 | (unsigned long)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap) return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)n;
}

static long read_number(const char *path) {
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

/* 0; 1 when HEX is not 8..256 bytes of hex; -1 when the kernel refused (reason in `why`). */
static int reseed(const char *hex) {
    struct { int entropy_count; int buf_size; unsigned char buf[256]; } e;
    size_t len = strlen(hex);
    if (len < 16 || len > 2 * sizeof e.buf || len % 2) return 1;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return 1;
        e.buf[i] = (unsigned char)(hi << 4 | lo);
    }
    e.buf_size = (int)(len / 2);
    e.entropy_count = e.buf_size * 8;
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -fail("/dev/urandom");
    if (ioctl(fd, RNDADDENTROPY, &e) != 0 || ioctl(fd, RNDRESEEDCRNG) != 0) {
        /* An older kernel: at least mix the bytes in. */
        if (write(fd, e.buf, (size_t)e.buf_size) < 0) {
            close(fd);
            return -fail("reseeding the RNG");
        }
    }
    close(fd);
    return 0;
}

/* Forks: 0 in a child of its own session with no stdio (it outlives the caller), the
 * child's pid (or -1) in the caller. */
static pid_t detach(void) {
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
    }
    return pid;
}

/* Restarts the SSH listener (sshd-loop starts it again at once, with the new host key and
 * banner, when /run/dropbear.restart exists) 0.2 s from now, at the lowest priority: not in
 * the way of the service's first commands on the copy. A connection in between meets the
 * old host key, and the service dials again. */
static void restart_listener_soon(void) {
    if (detach() != 0) return;
    setpriority(PRIO_PROCESS, 0, 19);
    struct timespec pause_for = { .tv_sec = 0, .tv_nsec = 200 * 1000 * 1000 };
    nanosleep(&pause_for, NULL);
    long old = read_number("/run/dropbear.pid");
    write_file("/run/dropbear.restart", "", 0, 0644);
    if (old > 1) kill((pid_t)old, SIGTERM);
    _exit(0);
}

/* Makes this guest VM `id`; 0, or non-zero with the reason in `why`. */
static int refresh(const char *id, const char *epoch_s, const char *seed, const char *key_b64, int noreport) {
    if (!id[0] || strlen(id) > 200) return usage("ID must be 1 to 200 characters");
    char *end;
    long long epoch = strtoll(epoch_s, &end, 10);
    if (*end || epoch <= 0) return usage("EPOCH is not a number of seconds");
    unsigned char key[512];
    long key_len = unbase64(key_b64, key, sizeof key);
    if (key_len <= 0) return usage("HOSTKEY is not base64");
    int r = reseed(seed);
    if (r > 0) return usage("SEED must be 8 to 256 bytes in hex");
    if (r < 0) return 1;
    char line[256];
    int n = snprintf(line, sizeof line, "%s\n", id);
    if (write_file("/etc/vm-id", line, (size_t)n, 0644) != 0) return fail("/etc/vm-id");
    if (write_file("/proc/sys/kernel/hostname", id, strlen(id), 0644) != 0) return fail("setting the hostname");
    struct timespec now = { .tv_sec = (time_t)epoch, .tv_nsec = 0 };
    if (clock_settime(CLOCK_REALTIME, &now) != 0) return fail("setting the clock");
    if (write_file(HOST_KEY ".new", key, (size_t)key_len, 0600) != 0) return fail(HOST_KEY ".new");
    if (rename(HOST_KEY ".new", HOST_KEY) != 0) return fail(HOST_KEY);
    restart_listener_soon();
    /* On RAM mapped from a template QEMU cannot drop reported pages; 11 is above the
     * largest page order, so no free block is reported. Best effort (no such module: fine). */
    if (noreport) write_file("/sys/module/page_reporting/parameters/page_reporting_order", "11", 2, 0644);
    /* The disk of a restored VM is resized under it (to its disk_gib): grow into it. */
    long total = read_number("/sys/block/vda/size"), start = read_number("/sys/block/vda/vda2/start"),
         size = read_number("/sys/block/vda/vda2/size");
    if (total > 0 && start > 0 && size > 0 && total - start > size && detach() == 0) {
        execl("/sbin/vm-grow", "vm-grow", (char *)NULL);
        _exit(127);
    }
    return 0;
}

/* The device of the virtio-serial port called `name` (/dev/vportNpM), or 0. */
static int find_port(const char *name, char *dev, size_t cap) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[300], got[64];
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, got, sizeof got - 1);
        close(fd);
        if (n <= 0) continue;
        got[n] = 0;
        if (got[n - 1] == '\n') got[n - 1] = 0;
        if (strcmp(got, name) == 0) {
            snprintf(dev, cap, "/dev/%s", e->d_name);
            found = access(dev, R_OK | W_OK) == 0;
        }
    }
    closedir(d);
    return found;
}

static void answer(int fd, const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n <= 0) return;
        text += n;
        len -= (size_t)n;
    }
}

static void handle(int fd, char *line) {
    char *f[7];
    int n = 0;
    for (char *tok = strtok(line, " "); tok && n < 7; tok = strtok(NULL, " ")) f[n++] = tok;
    if (n == 1 && strcmp(f[0], "ping") == 0) {
        answer(fd, "pong\n");
        return;
    }
    if (n != 6 || strcmp(f[0], "refresh") != 0) {
        answer(fd, "error expected: refresh ID EPOCH SEED HOSTKEY NOREPORT\n");
        return;
    }
    why[0] = 0;
    if (refresh(f[1], f[2], f[3], f[4], strcmp(f[5], "1") == 0) == 0) {
        answer(fd, "ok\n");
        return;
    }
    char reply[200];
    snprintf(reply, sizeof reply, "error %s\n", why);
    answer(fd, reply);
}

static int serve(void) {
    signal(SIGCHLD, SIG_IGN); /* vm-grow children are reaped by the kernel */
    char dev[300];
    /* The port appears once the virtio_console driver is loaded; a VM without it (an older
     * service) has nothing to serve. */
    for (int i = 0; !find_port("vmsvc.refresh", dev, sizeof dev); i++) {
        if (i >= 20) for (;;) pause();
        sleep(1);
    }
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror(dev);
        sleep(5);
        return 1;
    }
    char buf[2048];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            /* 0: no service connected to the port (it reads EOF then). */
            have = 0;
            sleep(1);
            continue;
        }
        have += (size_t)n;
        char *nl;
        while ((nl = memchr(buf, '\n', have))) {
            *nl = 0;
            handle(fd, buf);
            size_t used = (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have - used);
            have -= used;
        }
        if (have == sizeof buf - 1) {
            answer(fd, "error line too long\n");
            have = 0;
        }
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
    if (argc != 5) {
        fprintf(stderr, "usage: vm-refresh ID EPOCH SEED HOSTKEY | vm-refresh --serve\n");
        return 2;
    }
    int r = refresh(argv[1], argv[2], argv[3], argv[4], 0);
    if (r != 0) fprintf(stderr, "vm-refresh: %s\n", why);
    return r;
}
