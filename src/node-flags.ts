// The flags node is started with to run the sidecar (the image's ENTRYPOINT; the benches start the
// bundle the same way). They can only be given on node's command line: NODE_OPTIONS refuses them and
// V8 reads them once, when the heap is made.
//
// --initial-old-space-size=64: V8 never sets the old generation's next collection limit below
//   64 MB. Without it, a sidecar relaying a bulk transfer could settle in a state where every
//   scavenge forced by Node's read buffers (external memory) was followed by a full mark-compact
//   that freed nothing: about ten a second, a quarter of the relay's throughput (bench/proxy.ts,
//   ForwardTcp bulk: 199 full collections for 6 GiB relayed, 0.74-0.78x of a bare Node proxy; with
//   the flag 1, 0.95-0.96x). A sidecar holding thousands of sessions is far above 64 MB anyway.
export const NODE_FLAGS: readonly string[] = ['--initial-old-space-size=64'];

/** The flags this process was started without (to say so at start). */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return NODE_FLAGS.filter((flag) => !execArgv.includes(flag));
}
