// A set for members that come and go by the thousand a second (accepted connections, HTTP/2
// connections) and is itself held for the whole process.
//
// Why not a Set: once a long-lived Set's (or Map's) hash table has been promoted to V8's old
// generation, every table it later grows, shrinks or compacts into is allocated there too, and the
// table it leaves behind still points at the members it held. A scavenge takes every old-to-young
// pointer as a root, whether the old object is alive or not, so each member that was in the set when
// its table was replaced survives and is promoted with all it reaches (a closed socket, its buffers,
// the closures on it), to die only at the next full collection. With members that churn that is
// nearly every one of them: test/unit/linked-set.test.ts shows it, and the public listener's two
// socket sets made a CONNECT open promote ~2 KB more (docs/performance.md, twelfth session).
//
// Here each member has a node of its own in a doubly linked list, and a node taken out lets go of
// its neighbours and its value: nothing dead points at anything young.

/** What `add` returns: the caller keeps it to take the member out again. */
export interface LinkedMember {
  readonly [linked]: true;
}
declare const linked: unique symbol;

class Node<T> {
  constructor(
    public value: T | undefined,
    public prev: Node<T> | null,
    public next: Node<T> | null,
  ) {}
}

export class LinkedSet<T> implements Iterable<T> {
  readonly #head: Node<T>;
  #size = 0;

  constructor() {
    const head = new Node<T>(undefined, null, null);
    head.prev = head;
    head.next = head;
    this.#head = head;
  }

  get size(): number {
    return this.#size;
  }

  add(value: T): LinkedMember {
    const head = this.#head;
    const node = new Node<T>(value, head.prev, head);
    (head.prev as Node<T>).next = node;
    head.prev = node;
    this.#size++;
    return node as unknown as LinkedMember;
  }

  /** Takes a member out; false if it was out already (deleted, or the set cleared since). */
  delete(member: LinkedMember): boolean {
    const node = member as unknown as Node<T>;
    const { prev, next } = node;
    if (prev === null || next === null) return false;
    prev.next = next;
    next.prev = prev;
    node.prev = null;
    node.next = null;
    node.value = undefined;
    this.#size--;
    return true;
  }

  clear(): void {
    const head = this.#head;
    let node = head.next as Node<T>;
    while (node !== head) {
      const next = node.next as Node<T>;
      node.prev = null;
      node.next = null;
      node.value = undefined;
      node = next;
    }
    head.prev = head;
    head.next = head;
    this.#size = 0;
  }

  /** The members at the time of the call, oldest first (members may come and go meanwhile). */
  [Symbol.iterator](): Iterator<T> {
    const members: T[] = [];
    const head = this.#head;
    for (let node = head.next as Node<T>; node !== head; node = node.next as Node<T>) members.push(node.value as T);
    return members[Symbol.iterator]();
  }
}
