// Starts the test OpenID provider for the benchmark.
export async function startProvider() {
  throw new Error("provider not wired yet");
}
