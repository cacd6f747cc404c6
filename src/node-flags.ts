// The flags node is started with to run the sidecar (the image's ENTRYPOINT; the benches start the
// bundle the same way). The first two can only be given on node's command line (NODE_OPTIONS refuses
// them); V8 reads all three once, when the heap is made.
//
// --initial-old-space-size=64: V8 never sets the old generation's next collection limit below
//   64 MB. Without it, a sidecar relaying a bulk transfer could settle in a state where every
//   scavenge forced by Node's read buffers (external memory) was followed by a full mark-compact
//   that freed nothing: about ten a second, a quarter of the relay's throughput (bench/proxy.ts,
//   ForwardTcp bulk: 199 full collections for 6 GiB relayed, 0.74-0.78x of a bare Node proxy; with
//   the flag 1, 0.95-0.96x). A sidecar holding thousands of sessions is far above 64 MB anyway.
//
// --no-allocation-site-pretenuring: V8 watches which allocation sites' objects survive scavenges
//   and, past a threshold, allocates that site's objects straight in the old generation. A sidecar
//   holding thousands of sessions teaches it exactly that for Node's HTTP/2 stream code, so every
//   later short stream (an exec, a port-forward open, a probe) was born old too; dead old objects
//   keep what they point to alive through every scavenge, so each request's whole graph (its
//   streams, buffers, our forward state) was copied and promoted, to die only at the next full
//   collection. At 10,000 + 10,000 held sessions the owner's scavenges promoted ~3 MB each and
//   paused it 7-11 ms every ~0.4 s: the routing probe's p99 (bench/scale.ts). Without
//   pretenuring: 0.5-0.7 MB and 2-3.6 ms, and the loaded RSS peak fell from 561 to 420 MB.
//   test/unit/node-flags.test.ts shows the retention with and without the flag.
//
// --max-semi-space-size=16: the young generation of Node 20 (two 16 MB semi-spaces) on every Node.
//   Node 24's V8 sizes it from the machine's memory instead: 64 MB semi-spaces on a 24 GB machine,
//   up to 128 MB of young generation kept resident beside the sessions. On Node 24 a sidecar holding
//   10,000 + 10,000 sessions settled at 469 MB of RSS without this flag and at 353-378 MB with it
//   (bench/scale.ts; 292 MB on Node 20, where the flag changes nothing); Node's own floor for that
//   shape (bench/h2-floor.ts) is 347-351 MB without it and 292 MB with it.
export const NODE_FLAGS: readonly string[] = ['--initial-old-space-size=64', '--no-allocation-site-pretenuring', '--max-semi-space-size=16'];

/** The flags this process was started without (to say so at start). */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return NODE_FLAGS.filter((flag) => !execArgv.includes(flag));
}
