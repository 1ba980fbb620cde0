/* vm-reseed HEX: credits HEX (randomness from the host, 8..256 bytes in hex) to the guest
 * kernel's entropy pool and reseeds its CRNG at once (RNDRESEEDCRNG). Writing to
 * /dev/urandom only mixes the bytes in; a restored clone would then draw the same random
 * numbers as its siblings until the kernel's next scheduled reseed (up to a minute). On
 * machines with a vmgenid device the kernel reseeds by itself; microvm has none. */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv) {
    struct { int entropy_count; int buf_size; unsigned char buf[256]; } e;
    size_t len = argc == 2 ? strlen(argv[1]) : 0;
    if (len < 16 || len > 2 * sizeof e.buf || len % 2) {
        fprintf(stderr, "usage: vm-reseed HEX (8 to 256 bytes of host randomness)\n");
        return 2;
    }
    for (size_t i = 0; i < len / 2; i++) {
        int hi = nibble(argv[1][2 * i]), lo = nibble(argv[1][2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "vm-reseed: not hex\n");
            return 2;
        }
        e.buf[i] = (unsigned char)(hi << 4 | lo);
    }
    e.buf_size = (int)(len / 2);
    e.entropy_count = e.buf_size * 8;
    int fd = open("/dev/urandom", O_WRONLY);
    if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e) != 0 || ioctl(fd, RNDRESEEDCRNG) != 0) {
        fprintf(stderr, "vm-reseed: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
