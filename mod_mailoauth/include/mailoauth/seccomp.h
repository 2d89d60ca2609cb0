/*
 * mod_mailoauth - building blocks of the seccomp filters
 *
 * The processes that read hostile input (the parser, the TNEF decoders)
 * each install a small allow-list filter.  The lists differ; the way an
 * entry is written does not, and lives here.  MAILOAUTH_SECCOMP_ARCH is
 * defined only where a filter can be built (Linux, a known architecture);
 * elsewhere the callers say they have none.
 *
 * Include after <linux/audit.h>, <linux/filter.h>, <linux/seccomp.h>,
 * <sys/prctl.h>, <sys/mman.h> and <stddef.h>.  No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_SECCOMP_H
#define MOD_MAILOAUTH_SECCOMP_H

#if defined(__linux__) && defined(SECCOMP_MODE_FILTER) && \
  defined(PR_SET_NO_NEW_PRIVS)
# if defined(__x86_64__) && defined(AUDIT_ARCH_X86_64)
#  define MAILOAUTH_SECCOMP_ARCH        AUDIT_ARCH_X86_64
# elif defined(__aarch64__) && defined(AUDIT_ARCH_AARCH64)
#  define MAILOAUTH_SECCOMP_ARCH        AUDIT_ARCH_AARCH64
# elif defined(__i386__) && defined(AUDIT_ARCH_I386)
#  define MAILOAUTH_SECCOMP_ARCH        AUDIT_ARCH_I386
# elif defined(__powerpc64__) && defined(AUDIT_ARCH_PPC64LE) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#  define MAILOAUTH_SECCOMP_ARCH        AUDIT_ARCH_PPC64LE
# elif defined(__s390x__) && defined(AUDIT_ARCH_S390X)
#  define MAILOAUTH_SECCOMP_ARCH        AUDIT_ARCH_S390X
# elif defined(__riscv) && __riscv_xlen == 64 && defined(AUDIT_ARCH_RISCV64)
#  define MAILOAUTH_SECCOMP_ARCH        AUDIT_ARCH_RISCV64
# endif
#endif

#ifdef MAILOAUTH_SECCOMP_ARCH

# ifdef SECCOMP_RET_KILL_PROCESS
#  define MAILOAUTH_SECCOMP_KILL        SECCOMP_RET_KILL_PROCESS
# else
#  define MAILOAUTH_SECCOMP_KILL        SECCOMP_RET_KILL
# endif

/* The low 32 bits of a system call argument. */
# if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#  define MAILOAUTH_SECCOMP_ARG_LO(n) \
  (offsetof(struct seccomp_data, args[n]) + 4)
# else
#  define MAILOAUTH_SECCOMP_ARG_LO(n) \
  offsetof(struct seccomp_data, args[n])
# endif

/* The filter's start: another architecture's calls (and x32's) would
 * mean other numbers, so they end the process; then load the number.
 */
# if defined(__x86_64__) && defined(__X32_SYSCALL_BIT)
#  define MAILOAUTH_SECCOMP_PROLOGUE \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, arch)), \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, MAILOAUTH_SECCOMP_ARCH, 1, 0), \
  BPF_STMT(BPF_RET|BPF_K, MAILOAUTH_SECCOMP_KILL), \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, nr)), \
  BPF_JUMP(BPF_JMP|BPF_JGE|BPF_K, __X32_SYSCALL_BIT, 0, 1), \
  BPF_STMT(BPF_RET|BPF_K, MAILOAUTH_SECCOMP_KILL)
# else
#  define MAILOAUTH_SECCOMP_PROLOGUE \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, arch)), \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, MAILOAUTH_SECCOMP_ARCH, 1, 0), \
  BPF_STMT(BPF_RET|BPF_K, MAILOAUTH_SECCOMP_KILL), \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, nr))
# endif

# define MAILOAUTH_SECCOMP_ALLOW(nr) \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, (nr), 0, 1), \
  BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW)

/* Mappings, but never executable ones: no new code.  deny: what an
 * executable mapping gets.
 */
# define MAILOAUTH_SECCOMP_ALLOW_NOEXEC(nr, deny) \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, (nr), 0, 4), \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, MAILOAUTH_SECCOMP_ARG_LO(2)), \
  BPF_JUMP(BPF_JMP|BPF_JSET|BPF_K, PROT_EXEC, 1, 0), \
  BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW), \
  BPF_STMT(BPF_RET|BPF_K, (deny))

#endif /* MAILOAUTH_SECCOMP_ARCH */

#endif /* MOD_MAILOAUTH_SECCOMP_H */
