// What the benchmarks take from the test suite, in one place: the soak starts the real server
// as the server tests do and talks to it with the reliability suite's clients; the
// microbenchmarks use the tests' loopback pair.
export { startServer } from "../tests/_server_process.ts";
export { connect, delay, loopback, within } from "../tests/_net.ts";
export {
  childRunning,
  EchoTally,
  garbageConversation,
  openFds,
  payload,
  pingPong,
  Random,
  ResettingClient,
  rss,
  stream,
  type Tally,
} from "../tests/_clients.ts";
