/*
 * allowread: read a dracd.allow on stdin the way DRAC 1.12's rpc.dracd read
 * it, and print one line per input line: the rule it made, as
 * "MASK ADDR" in 8-digit hex (host byte order), or "skip".
 *
 * DRAC skipped lines starting with '#', took two runs of digits and dots
 * with sscanf("%[0-9.] %[0-9.]") and converted each with inet_addr(), so
 * this program calls the C library's own sscanf() and inet_addr(): it is the
 * reference tests/test_allow_legacy.py compares dracd's reading against.
 * (DRAC's fields had no width; the widths here only keep the test's own
 * lines, all shorter, from overflowing.)
 */
#include <arpa/inet.h>
#include <stdio.h>

int main(void)
{
    char buf[128], mask[32], addr[32];

    while (fgets(buf, sizeof buf, stdin) != NULL) {
        if (buf[0] != '#' && sscanf(buf, "%31[0-9.] %31[0-9.]", mask, addr) == 2)
            printf("%08x %08x\n", (unsigned)ntohl(inet_addr(mask)), (unsigned)ntohl(inet_addr(addr)));
        else
            puts("skip");
    }
    return 0;
}
