// The ES module entry of herd-cluster: the same object as require('herd-cluster') (herd.js), as
// the default export and as named exports.
import herd from './herd.js';

export default herd;
export const { request, onRequest, ready, listening, connect } = herd;

// herd.cache is made on first use and throws outside herd (no channel, or another manager's):
// under herd it is exported as itself, elsewhere as a stand-in whose calls fail as herd.cache
// would.
const lazy = (name) => (...args) => herd.cache[name](...args);
const underHerd = (() => {
  try {
    return herd.cache;
  } catch {
    return null;
  }
})();
export const cache =
  underHerd !== null
    ? underHerd
    : Object.freeze({
        get: lazy('get'),
        json: lazy('json'),
        peek: lazy('peek'),
        set: lazy('set'),
        delete: lazy('delete'),
        ready: lazy('ready'),
        stats: lazy('stats'),
      });
