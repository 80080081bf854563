/* Classic container-escape attempts, run inside a RUN step by cli/tests/security_sandbox.rs.
 * Built statically by the test (cc -static). Each attempt prints one line
 *   RESULT <name> refused <errno name>     (what a sandbox must answer)
 *   RESULT <name> DONE                     (the attack went through)
 * so the test can assert "refused" for every name and look for DONE nowhere. argv[1] is a
 * marker (used in key descriptions, hostnames…), argv[2] a host path that must stay
 * invisible, argv[3] a host pid. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc < 0)
        printf("RESULT %s refused %s\n", name, strerrorname_np(errno));
    else
        printf("RESULT %s DONE\n", name);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: attack MARKER HOST_PATH HOST_PID\n");
        return 2;
    }
    const char *marker = argv[1];
    const char *host_path = argv[2];
    pid_t host_pid = (pid_t)atoi(argv[3]);
    char buf[256];

    /* mount / umount */
    mkdir("/tmp/attack-mnt", 0755);
    report("mount-tmpfs", mount(marker, "/tmp/attack-mnt", "tmpfs", 0, NULL));
    report("mount-bind-root", mount("/", "/tmp/attack-mnt", NULL, MS_BIND, NULL));
    report("mount-proc", mount("proc", "/tmp/attack-mnt", "proc", 0, NULL));
    report("remount-root-rw-dev", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    report("umount-proc", umount2("/proc", MNT_DETACH));
    report("umount-etc-hosts", umount2("/etc/hosts", 0));
    report("umount-masked-kcore", umount2("/proc/kcore", MNT_DETACH));

    /* namespaces */
    report("unshare-user", unshare(CLONE_NEWUSER));
    report("unshare-mount", unshare(CLONE_NEWNS));
    report("unshare-net", unshare(CLONE_NEWNET));
    int nsfd = open("/proc/1/ns/mnt", O_RDONLY);
    report("setns-mnt", nsfd < 0 ? -1 : setns(nsfd, 0));
    report("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp/attack-mnt"));

    /* ptrace: a host process (not even visible) and the step's own pid 1 */
    report("ptrace-attach-host", ptrace(PTRACE_ATTACH, host_pid, 0, 0));
    report("ptrace-seize-host", ptrace(PTRACE_SEIZE, host_pid, 0, 0));

    /* keyrings */
    snprintf(buf, sizeof buf, "rbuild-attack-%s", marker);
    report("add_key", syscall(SYS_add_key, "user", buf, "x", 1, -3 /* session */));
    report("keyctl-join", syscall(SYS_keyctl, 1 /* JOIN_SESSION_KEYRING */, buf));
    report("request_key", syscall(SYS_request_key, "user", buf, NULL, 0));

    /* kernel modules, bpf, perf, handles */
    report("init_module", syscall(SYS_init_module, buf, 16, ""));
    int devnull = open("/dev/null", O_RDONLY);
    report("finit_module", syscall(SYS_finit_module, devnull, "", 0));
    report("delete_module", syscall(SYS_delete_module, "loop", O_NONBLOCK));
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    report("bpf-map-create", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_CPU_CLOCK;
    report("perf_event_open", syscall(SYS_perf_event_open, &pe, -1, 0, -1, 0));
    /* shocker (CVE-2014-3519 class): open the filesystem root by inode handle */
    struct {
        unsigned int handle_bytes;
        int handle_type;
        unsigned char f_handle[8];
    } h = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    int rootfd = open("/etc/hostname", O_RDONLY);
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, rootfd, &h, O_RDONLY));

    /* host identity and clock */
    snprintf(buf, sizeof buf, "x%s", marker);
    report("sethostname", sethostname(buf, strlen(buf)));
    report("setdomainname", setdomainname(buf, strlen(buf)));
    struct timespec ts = {1, 0};
    report("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
    report("acct", acct("/tmp/attack-acct"));
    report("swapon", swapon("/tmp/attack-swap", 0));
    report("iopl", syscall(SYS_iopl, 3));
    report("ioperm", syscall(SYS_ioperm, 0x80, 1, 1));

    /* chroot escape: chroot into a subdir, climb, chroot "." — must land in the sandbox root */
    mkdir("/tmp/attack-chroot", 0755);
    if (chroot("/tmp/attack-chroot") == 0) {
        for (int i = 0; i < 64; i++)
            chdir("..");
        chroot(".");
    }
    report("chroot-escape-sees-host", access(host_path, F_OK));
    return 0;
}
