// The step's logic, free of host imports so plain Node can test it.
export function greeting(name, shout) {
  const text = `hello, ${name}!`;
  return shout ? text.toUpperCase() : text;
}
