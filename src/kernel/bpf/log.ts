// Where libbpf's own messages go when no call is capturing them (its warnings; with
// debug, its info and debug lines too). Set by the top of each process (the CLI, the
// agent, the plugin's entry), which decides between stderr and a log and reads
// PATU_BPF_DEBUG; unset, they are dropped, because a lower layer does not print.
// Import-free, so setting it does not load libbpf.
export const libbpfLog: { sink: ((text: string) => void) | undefined; debug: boolean } = { sink: undefined, debug: false };
