// A budget of bytes the proxy may hold in memory at once (first gRPC messages buffered before a
// request can be routed). One per client connection and one for the whole replica: a connection
// that stalls many streams half-way through their first message is refused further streams
// instead of pinning memory, and no set of connections can together exceed the replica's budget.
export class ByteBudget {
  private used = 0;

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  /** Takes `n` bytes if they fit; false (and nothing taken) otherwise. */
  tryTake(n: number): boolean {
    if (this.used + n > this.limit) return false;
    this.used += n;
    return true;
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}
