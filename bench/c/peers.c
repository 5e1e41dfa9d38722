/* The C peers of bench/evtchn_gnttab.py: the same loops through libxenevtchn and libxengnttab.
 *
 *   gcc -O2 -o bench/.build/peers bench/c/peers.c -lxenevtchn -lxengnttab
 *   peers evtchn N     notify + wait (poll) + pending + unmask round trips on a dom0 loopback channel
 *   peers gnttab N     map + unmap cycles of one page dom0 granted to itself (gntshr)
 * Prints "<what> <n> <seconds>".
 */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <xenevtchn.h>
#include <xengnttab.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bench_evtchn(long n)
{
    xenevtchn_handle *x = xenevtchn_open(NULL, 0);
    if (!x) { perror("xenevtchn_open"); return 1; }
    int a = xenevtchn_bind_unbound_port(x, 0);
    int b = xenevtchn_bind_interdomain(x, 0, a);
    if (a < 0 || b < 0) { perror("bind"); return 1; }
    struct pollfd p = { .fd = xenevtchn_fd(x), .events = POLLIN };
    /* the bind itself fires b once (Xen marks a new interdomain port pending) */
    poll(&p, 1, 10000);
    if (xenevtchn_pending(x) != b) { fprintf(stderr, "unexpected first port\n"); return 1; }
    xenevtchn_unmask(x, b);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        xenevtchn_notify(x, b);
        if (poll(&p, 1, 10000) != 1) { fprintf(stderr, "timeout\n"); return 1; }
        if (xenevtchn_pending(x) != a) { fprintf(stderr, "wrong port\n"); return 1; }
        xenevtchn_unmask(x, a);
    }
    printf("evtchn %ld %.6f\n", n, now() - t0);
    xenevtchn_close(x);
    return 0;
}

static int bench_gnttab(long n)
{
    xengntshr_handle *s = xengntshr_open(NULL, 0);
    xengnttab_handle *g = xengnttab_open(NULL, 0);
    if (!s || !g) { perror("open"); return 1; }
    uint32_t ref;
    void *page = xengntshr_share_pages(s, 0, 1, &ref, 1);
    if (!page) { perror("share"); return 1; }
    double t0 = now();
    for (long i = 0; i < n; i++) {
        volatile unsigned char *m = xengnttab_map_grant_ref(g, 0, ref, PROT_READ | PROT_WRITE);
        if (!m) { perror("map"); return 1; }
        m[0] = (unsigned char)i;
        xengnttab_unmap(g, (void *)m, 1);
    }
    printf("gnttab %ld %.6f\n", n, now() - t0);
    xengntshr_unshare(s, page, 1);
    xengnttab_close(g);
    xengntshr_close(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s evtchn|gnttab N\n", argv[0]); return 2; }
    long n = atol(argv[2]);
    if (!strcmp(argv[1], "evtchn")) return bench_evtchn(n);
    if (!strcmp(argv[1], "gnttab")) return bench_gnttab(n);
    return 2;
}
