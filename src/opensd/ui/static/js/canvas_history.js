// Undo/redo for the canvas: a stack of states (what a state holds is the editor's business), at most
// `limit` steps back.
export function history(limit) {
  const back = [];
  const forward = [];
  return {
    // Before a change: the state to go back to. A new change forgets what was undone.
    remember(state) {
      back.push(state);
      if (back.length > limit) back.shift();
      forward.length = 0;
    },
    undo(current) { forward.push(current); return back.pop(); },
    redo(current) { back.push(current); return forward.pop(); },
    // The change remembered last did not happen after all (a stroke that became a pinch).
    cancel: () => back.pop(),
    canUndo: () => back.length > 0,
    canRedo: () => forward.length > 0,
  };
}
