// sd2-app page script, run once when the page loads (build_ui passes the style sheet as `css`).
// - Ctrl+Enter or Cmd+Enter in a prompt box presses that tab's Generate, as in A1111; Enter alone makes a new line.
//   Alt+Enter there presses the tab's Skip while a run is on, as A1111's does.
// - Ctrl+Up or Ctrl+Down (Cmd on a Mac) in a prompt box raises or lowers the attention of the selected text, or with
//   nothing selected of the "(text:weight)" around the caret or else the word there, by 0.1, as A1111's
//   javascript/edit-attention.js does: "fox" becomes "(fox:1.1)", then "(fox:1.2)"; back at 1 the parentheses go.
// - Esc in a tab's prompt row (its prompt boxes and buttons), or with nothing focused, presses the shown tab's Stop
//   while a run of that tab is on, as A1111's Esc interrupts; elsewhere (a dropdown, an open image) Esc is left
//   to the widget.
// - On a phone (one column), Generate scrolls the tab's results into view, and they stay there when the run ends.
// - The line under each tab's Generate/Stop (`<tab>-run-status`) repeats the tab's info line (`<tab>-info`, under
//   the results and below the fold of a laptop screen) while it tells the run's state: queued, running,
//   stopped, or why it was refused; it is empty while the info line shows a finished result ("Seed …", "Seeds …"), unless
//   Stop ended that result's run ("Stopped at step k/N; kept the image so far.").
// - Each file put into an image editor of class "checked-editor" (Inpaint: uploaded, dropped or pasted) goes to the
//   editor's hidden checker as well (`<editor>-check`, ui/uploads.py `file_check`), whose upload check says why
//   a file is refused: one the browser cannot decode (the editor would silently ignore it) or one over the
//   server's size limit. A paste with the Paste button of an image box of class "checked-paste" (ui/uploads.py
//   `upload_image`) that finds no image in the clipboard (the box reads it with navigator.clipboard.read and
//   ignores anything else without a word) sends what the clipboard held, or an empty file, to the box's checker
//   (`<box>-check`).
// - ⇅ (class "swap-size", ui/layout.py `swap_size_button`) does not take the focus from a width or height box when
//   pressed: leaving the box sends its value to be shown as a run uses it (ui/size_boxes.py), and that answer,
//   coming after the swap, would put the box's old value back.
// - While a run is on, the page's title starts with how far it is ("[45%] "), as A1111's does, read from the
//   run's progress line ("Step 9/20", "Batch 2/4, step 3/20", "3 cell(s) done · step 13/40"; the first tab
//   with one): a visitor on another browser tab sees it there.
// - ↙ beside Stop (class "read-parameters"), ⇅ (class "swap-size") and Zip (class "zip-button") get their tooltips
//   and accessible names when pointed at or focused.
// - An image dropped onto a prompt box of a tab with ↙ goes to the tab's hidden reader (`<tab>-prompt-image`,
//   ui/read_parameters.py `wire_prompt_drop`), which puts its parameters text into the prompt, as A1111's drop onto
//   the prompt does; one dropped onto PNG info's Parameters box goes to PNG info's image box, which reads it. A file
//   dropped where nothing takes it (not an image box) is not opened by the browser, which would leave the page and
//   lose what the visitor had typed.
// - "Notify me when a run ends" (ui/notify.py) asks the browser for permission to show notifications when turned
//   on (saying why it stays off where the browser has none or they are blocked) and is remembered in the browser.
//   While it is on, a run of any tab that ends (its Stop disabled again) while the page is not in front shows a
//   notification: the tab's name, its info line's first line ("Seed 42 · ..."), the first result as its picture;
//   clicking it brings the page to the front. As A1111's javascript/notification.js does.
// - An image pasted (Ctrl+V) anywhere on a tab with image boxes goes into its first empty one, or its first when all
//   hold one, as A1111's javascript/dragdrop.js does; in a text box it does so only when the clipboard holds no
//   text. It is uploaded as a file chosen with the box's own button would be (the box's and the server's checks).
// - Right-click on a tab's Generate opens A1111's menu there (javascript/contextMenus.js): "Generate forever" runs
//   the tab again each time its run ends with a result, until "Cancel generate forever" in the same menu, the
//   tab's Stop (or Esc), a run that ends without one (refused, failed), which would only repeat, or one that never
//   starts (the server out of reach). Generate shows
//   it is on (its `data-forever` attribute, its tooltip).
(css) => {
  if (window.sd2AppReady) return;
  window.sd2AppReady = true;
  const style = document.createElement("style");
  style.textContent = css;
  document.head.appendChild(style);

  // A button (or the block around it) when it can be pressed: enabled and shown (not in a hidden tab; Skip shows
  // only while a run is on, static/app.css).
  const pressable = (element) => {
    const button = element && (element.tagName === "BUTTON" ? element : element.querySelector("button"));
    return button && !button.disabled && button.offsetParent !== null ? button : null;
  };

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey || event.altKey)) return;
    const box = event.target.closest && event.target.closest(".prompt-box");
    if (!box || !box.id) return;
    const target = document.getElementById(box.id.replace(/-(prompt|negative)$/, event.altKey ? "-skip" : "-run"));
    if (!target) return;
    event.preventDefault();
    const button = pressable(target);
    if (button) button.click();
  });

  // The prompt syntax's weighted group is "(text:weight)" (sd2_app/prompt_syntax.py); a word ends at a space,
  // punctuation or a bracket.
  const wordEnd = /[\s,.;:!?()[\]{}<>|]/;
  const weightAfter = /^:(-?\d+(?:\.\d+)?)\)/;
  const editAttention = (box, up) => {
    const text = box.value;
    let start = box.selectionStart;
    let end = box.selectionEnd;
    if (start === end) {
      const open = text.lastIndexOf("(", start - 1);
      const close = text.indexOf(")", start);
      const inside = open >= 0 && close >= 0 ? text.slice(open + 1, close) : "";
      const colon = inside.lastIndexOf(":");
      if (open >= 0 && close >= 0 && !/[()]/.test(inside) && colon >= 0 && weightAfter.test(inside.slice(colon) + ")")) {
        [start, end] = [open + 1, open + 1 + colon];
      } else {
        while (start > 0 && !wordEnd.test(text[start - 1])) start -= 1;
        while (end < text.length && !wordEnd.test(text[end])) end += 1;
      }
    }
    while (start < end && /\s/.test(text[start])) start += 1;
    while (end > start && /\s/.test(text[end - 1])) end -= 1;
    if (start === end) return false;
    const weighted = text[start - 1] === "(" ? weightAfter.exec(text.slice(end)) : null;
    const step = up ? 0.1 : -0.1;
    const weight = Math.round(((weighted ? parseFloat(weighted[1]) : 1) + step) * 100) / 100;
    const inner = text.slice(start, end);
    const [before, after] = weighted ? [text.slice(0, start - 1), text.slice(end + weighted[0].length)]
      : [text.slice(0, start), text.slice(end)];
    const edited = weight === 1 ? inner : `(${inner}:${weight})`;
    box.value = before + edited + after;
    const from = before.length + (weight === 1 ? 0 : 1);
    box.setSelectionRange(from, from + inner.length);
    box.dispatchEvent(new Event("input", { bubbles: true }));
    return true;
  };
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
    const box = event.target.closest && event.target.closest(".prompt-box") && event.target;
    if (box && box.tagName === "TEXTAREA" && editAttention(box, event.key === "ArrowUp")) event.preventDefault();
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.ctrlKey || event.metaKey || event.altKey || event.shiftKey) return;
    const row = event.target.closest && event.target.closest(".prompt-row");
    const stops = row ? [row.querySelector(".stop-button")]
      : event.target === document.body ? [...document.querySelectorAll(".stop-button")] : [];
    const stop = stops.map(pressable).find(Boolean);
    if (!stop) return;
    event.preventDefault();
    stop.click();
  });

  // One column (a phone): the results are below the settings, so a run scrolls them into view. While the run is on,
  // its buttons ride in a bar at the bottom of the screen, out of the page (app.css), so the scroll waits for the
  // bar (Stop enabled: the server answered), or the results would end up under the screen's top by the buttons'
  // height. When the run ends the buttons are back in the page above the results, which would jump down by their
  // height: the page scrolls by as much, before that frame is drawn, so the results stay where the visitor had them.
  // Observers do the work when something changes: Stop's `disabled` (a MutationObserver, whose callback runs before
  // the next frame is drawn) and the page's size while the run is on (a ResizeObserver: what is above the results
  // may grow or shrink); the results' place in the page is read then, not every frame.
  const followRun = (results, stop) => {
    let place = null; // the results' top in the page (not the screen) while the run is on
    const measure = () => { place = results.getBoundingClientRect().top + window.scrollY; };
    const resized = new ResizeObserver(() => { if (place !== null) measure(); });
    const changed = () => {
      if (!stop.disabled && place === null) { // the run is on
        measure();
        results.scrollIntoView({ behavior: "smooth", block: "start" });
        resized.observe(document.body);
      } else if (stop.disabled && place !== null) { // the run ended
        const moved = results.getBoundingClientRect().top + window.scrollY - place;
        if (moved) window.scrollBy(0, moved);
        done();
      }
    };
    const watched = new MutationObserver(changed);
    const done = () => { watched.disconnect(); resized.disconnect(); clearTimeout(never); };
    const never = setTimeout(() => { if (place === null) done(); }, 10000); // the run never started (refused)
    watched.observe(stop, { attributes: true, attributeFilter: ["disabled"] });
    changed();
  };
  document.addEventListener("click", (event) => {
    const run = event.target.closest && event.target.closest(".run-button");
    if (!run || !run.id || window.innerWidth >= 1000) return;
    const results = document.getElementById(run.id.replace(/-run$/, "-results"));
    const stop = document.getElementById(run.id.replace(/-run$/, "-stop"));
    if (results && stop) followRun(results, stop);
  });

  // The info line's own text: without Gradio's status tracker (`data-testid="status-tracker"`), whose timer
  // ("0.3s") an event with the info line as an output, such as Stop's, shows in the same block.
  const infoText = (info) => [...info.childNodes]
    .filter((node) => !(node.nodeType === Node.ELEMENT_NODE && node.matches('[data-testid="status-tracker"]')))
    .map((node) => (node.nodeType === Node.ELEMENT_NODE ? node.innerText : node.textContent).trim())
    .filter(Boolean).join("\n");
  document.addEventListener("mousedown", (event) => {
    if (event.target.closest && event.target.closest(".swap-size")) event.preventDefault();
  });

  const plainTitle = document.title;
  const percentDone = (line) => {
    const batch = /^Batch (\d+)\/(\d+), step (\d+)\/(\d+)/.exec(line);
    const step = batch ? null : /^(?:Step |\d+ cell\(s\) done · step )(\d+)\/(\d+)/.exec(line);
    const [done, total] = batch ? [(batch[1] - 1) * batch[4] + +batch[3], batch[2] * batch[4]]
      : step ? [+step[1], +step[2]] : [0, 0];
    return total > 0 ? Math.floor((100 * done) / total) : null;
  };
  setInterval(() => {
    let percent = null;
    for (const status of document.querySelectorAll(".run-status")) {
      const info = document.getElementById(status.id.replace(/-run-status$/, "-info"));
      const line = status.querySelector(".run-status-text");
      if (!info || !line) continue;
      const text = infoText(info);
      // A result's line ("Seed …" or "Seeds …–…", not "Seed must be …") shows nothing there, unless Stop ended
      // its run: then the warning that says so (a run Stop ended mid-sampling keeps the image so far, `progress.kept_so_far_message`).
      const stopped = text.split("\n").map((l) => l.replace(/^\W+\s*/u, "")).find((l) => l.startsWith("Stopped at step "));
      const shown = /^Seeds? \d+(–\d+)? · /.test(text) ? (stopped || "") : text.split("\n")[0];
      if (line.textContent !== shown) line.textContent = shown;
      if (percent === null) percent = percentDone(shown);
    }
    const title = percent === null ? plainTitle : `[${percent}%] ${plainTitle}`;
    if (document.title !== title) document.title = title;
  }, 250);

  const upload = (input, file) => {
    const files = new DataTransfer();
    files.items.add(file);
    input.files = files.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  };
  const checkFile = async (box, file) => {
    if (!file) return;
    if (!box.classList.contains("checked-editor")) { // an image box checks what it opens itself
      try {
        (await createImageBitmap(file)).close();
        return; // the box opens it
      } catch (error) {} // the browser cannot decode it: the server's check says why
    }
    const input = document.querySelector(`#${box.id}-check input[type=file]`);
    if (input) upload(input, file);
  };
  // Capture phase: the file is taken before the editor's own handler runs (and may clear the input).
  document.addEventListener("change", (event) => {
    const editor = event.target.closest && event.target.closest(".checked-editor");
    if (editor && event.target.type === "file") checkFile(editor, event.target.files[0]);
  }, true);
  document.addEventListener("drop", (event) => {
    const editor = event.target.closest && event.target.closest(".checked-editor");
    if (editor && event.dataTransfer) checkFile(editor, event.dataTransfer.files[0]);
  }, true);

  // A Paste button of an image box of class "checked-paste" (or a checked editor) reads the clipboard in its own
  // click handler (Gradio's Upload `paste_clipboard` and ImageEditor's paste call navigator.clipboard.read there).
  // For that click only, the box's read is wrapped (whatever the button's label in the visitor's language): a
  // clipboard without an image, which the box ignores without a word, goes to the box's checker, which says why;
  // for an editor, a clipboard image goes there too.
  const checkPasted = async (box, items) => {
    const image = items.find((item) => item.types.some((type) => type.startsWith("image/")));
    if (image && !box.classList.contains("checked-editor")) return; // the box opens it and checks it
    const item = image || items[0];
    const type = item ? (image ? item.types.find((t) => t.startsWith("image/")) : item.types[0]) : null;
    const blob = type ? await item.getType(type) : new Blob([]);
    // named as an image, or the checker's own file-type filter stops it: the server reads the bytes
    checkFile(box, new File([blob], "clipboard.png", { type: "image/png" }));
  };
  window.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("button");
    const box = button && button.closest(".checked-editor, .checked-paste");
    const clipboard = navigator.clipboard;
    if (!box || !clipboard || !clipboard.read) return;
    // The browser's read is Clipboard.prototype's; the wrap is an own property of the page's clipboard, removed
    // at its first call or when this click's handlers (and the promise callbacks they start) have run.
    const restore = () => { if (clipboard.read === wrapped) delete clipboard.read; };
    const wrapped = async (...args) => {
      restore();
      const items = await clipboard.read(...args);
      checkPasted(box, items);
      return items;
    };
    clipboard.read = wrapped;
    setTimeout(restore, 0);
  }, true);

  // ↙ (ui/read_parameters.py), ⇅ (ui/layout.py) and Zip (ui/zip_results.py) say what they do when pointed at or
  // focused: Gradio's Button takes no tooltip.
  const hints = {
    "read-parameters": "Read generation parameters from the prompt, or from the last result if the prompt is empty",
    "swap-size": "Swap width and height",
    "zip-button": "Download every image of this result in one zip file",
  };
  const hint = (event) => {
    const button = event.target.closest && event.target.closest(".read-parameters, .swap-size, .zip-button");
    if (!button || button.title) return;
    const text = hints[[...button.classList].find((name) => name in hints)];
    button.title = text;
    button.setAttribute("aria-label", text);
  };
  document.addEventListener("pointerover", hint);
  document.addEventListener("focusin", hint);

  const NOTIFY_KEY = "sd2-app-notify";
  const notifySwitch = document.getElementById("notify-when-done");
  const notifyNote = document.getElementById("notify-when-done-note");
  const notifying = () => notifySwitch && notifySwitch.checked && "Notification" in window
    && Notification.permission === "granted";
  if (notifySwitch) {
    notifySwitch.checked = localStorage.getItem(NOTIFY_KEY) === "on" && "Notification" in window
      && Notification.permission === "granted";
    notifySwitch.addEventListener("change", async () => {
      notifyNote.textContent = "";
      if (!notifySwitch.checked) { localStorage.removeItem(NOTIFY_KEY); return; }
      const permission = !("Notification" in window) ? "none"
        : Notification.permission === "default" ? await Notification.requestPermission() : Notification.permission;
      if (permission === "granted") { localStorage.setItem(NOTIFY_KEY, "on"); return; }
      notifySwitch.checked = false;
      notifyNote.textContent = permission === "none" ? "This browser shows no notifications."
        : "Notifications are blocked for this page; allow them in the browser's settings for this site.";
    });
  }
  const notifyRunEnded = (prefix) => {
    const info = document.getElementById(`${prefix}-info`);
    const tab = document.querySelector(`[role=tab][data-tab-id="${prefix}"]`);
    const picture = document.querySelector(`#${prefix}-gallery img`);
    const line = info ? infoText(info).split("\n")[0] : "";
    let notice;
    try {
      notice = new Notification(`${plainTitle}: ${tab ? tab.textContent.trim() : prefix}`,
        { body: line, icon: picture ? picture.src : undefined, tag: `sd2-app-${prefix}` });
    } catch (error) { return; } // a browser that shows them only through a service worker (Chrome on Android)
    notice.onclick = () => { window.focus(); notice.close(); };
  };
  const forever = new Set(); // the tabs (their prefixes) generating forever
  const FOREVER_HINT = "Generating forever: right-click to cancel; Stop cancels it too";
  const setForever = (prefix, on) => {
    if (on) forever.add(prefix); else forever.delete(prefix);
    const run = document.getElementById(`${prefix}-run`);
    if (!run) return;
    if (on) run.dataset.forever = "on"; else delete run.dataset.forever; // Svelte rewrites the class attribute
    if (on) run.title = FOREVER_HINT; else if (run.title === FOREVER_HINT) run.removeAttribute("title");
  };
  const runsEnded = new Map(); // tab prefix: how many of its runs have ended on this page
  // Generate pressed for a tab generating forever. Its Stop is enabled at once (a quick event, not queued); if
  // that never happens and no run of the tab ends (the page cannot reach the server), generating forever ends
  // rather than wait for a run that was never made.
  const pressForever = (prefix, run) => {
    const ended = runsEnded.get(prefix) || 0;
    run.click();
    setTimeout(() => {
      const stop = document.getElementById(`${prefix}-stop`);
      if (forever.has(prefix) && stop && stop.disabled && (runsEnded.get(prefix) || 0) === ended) {
        setForever(prefix, false);
      }
    }, 10000);
  };
  // After a run of a tab generating forever: again while its runs end with a result ("Seed …"); Generate is
  // enabled again by the same answer that disabled Stop, or soon after.
  const runAgain = (prefix, tries = 20) => {
    if (!forever.has(prefix)) return;
    const info = document.getElementById(`${prefix}-info`);
    if (!info || !/^Seeds? \d+/.test(infoText(info))) { setForever(prefix, false); return; }
    const run = document.getElementById(`${prefix}-run`);
    if (run && !run.disabled) pressForever(prefix, run);
    else if (tries > 0) setTimeout(() => runAgain(prefix, tries - 1), 200);
  };
  let menu = null;
  const closeMenu = () => { if (menu) { menu.remove(); menu = null; } };
  document.addEventListener("contextmenu", (event) => {
    const run = event.target.closest && event.target.closest(".run-button");
    closeMenu();
    if (!run || !run.id) return;
    event.preventDefault();
    const prefix = run.id.replace(/-run$/, "");
    menu = document.createElement("div");
    menu.className = "run-menu";
    menu.setAttribute("role", "menu");
    const item = document.createElement("button");
    item.setAttribute("role", "menuitem");
    item.textContent = forever.has(prefix) ? "Cancel generate forever" : "Generate forever";
    item.addEventListener("click", () => {
      const on = !forever.has(prefix);
      setForever(prefix, on);
      closeMenu();
      const stop = document.getElementById(`${prefix}-stop`);
      if (on && !run.disabled && (!stop || stop.disabled)) pressForever(prefix, run); // idle: the first starts now
    });
    menu.appendChild(item);
    menu.style.left = `${event.pageX}px`;
    menu.style.top = `${event.pageY}px`;
    document.body.appendChild(menu);
    const box = menu.getBoundingClientRect(); // kept on the screen: opened to the left of a click near its edge
    if (box.right > window.innerWidth) menu.style.left = `${Math.max(0, event.pageX - box.width)}px`;
    item.focus();
  });
  document.addEventListener("click", (event) => {
    if (menu && !menu.contains(event.target)) closeMenu();
    const stop = event.target.closest && event.target.closest(".stop-button");
    if (stop && stop.id) setForever(stop.id.replace(/-stop$/, ""), false);
  }, true);
  document.addEventListener("keydown", (event) => { // Esc closes the menu first, and only the menu
    if (event.key === "Escape" && menu) { closeMenu(); event.stopImmediatePropagation(); }
  }, true);

  // A run has ended when its tab's Stop, enabled while it was on, is disabled again (the old value of the
  // attribute: absent): then a tab generating forever runs again, and the notification is shown. The last answer
  // of the run brings the result and the info line with it; they are read a moment later, once drawn.
  new MutationObserver((changes) => {
    for (const change of changes) {
      const stop = change.target;
      if (change.oldValue !== null || !stop.disabled || !stop.classList.contains("stop-button")) continue;
      const prefix = stop.id.replace(/-stop$/, "");
      runsEnded.set(prefix, (runsEnded.get(prefix) || 0) + 1);
      if (forever.has(prefix)) setTimeout(() => runAgain(prefix), 300);
      if (!notifying() || (!document.hidden && document.hasFocus())) continue;
      setTimeout(() => notifyRunEnded(prefix), 300);
    }
  }).observe(document.body, { attributes: true, attributeFilter: ["disabled"], attributeOldValue: true, subtree: true });

  // The image boxes of the shown tab that take uploads (an image box, the inpaint editor; not the hidden checkers).
  const shownImageInputs = () => [...document.querySelectorAll('.block input[type=file][accept^="image"]')]
    .filter((input) => { const box = input.closest(".block"); return box.offsetParent !== null && !/-check$/.test(box.id); });
  window.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    const image = data && [...data.files].find((file) => file.type.startsWith("image/"));
    if (!image || event.defaultPrevented) return;
    const typing = event.target.closest && event.target.closest("textarea, input, [contenteditable=true]");
    if (typing && data.types.includes("text/plain")) return;
    const inputs = shownImageInputs();
    if (!inputs.length) return;
    event.preventDefault();
    const empty = inputs.find((input) => !input.closest(".block").querySelector("img, canvas"));
    upload(empty || inputs[0], image);
  });

  const draggingFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  // The file input an image dropped onto `target` goes to: a prompt box's reader, or PNG info's image box.
  const droppedImageInput = (target) => {
    const pnginfo = target.closest && target.closest("#pnginfo-text");
    if (pnginfo) return document.querySelector("#pnginfo-image input[type=file]");
    const box = target.closest && target.closest(".prompt-box");
    if (!box || !box.id) return null;
    return document.querySelector(`#${box.id.replace(/-(prompt|negative)$/, "-prompt-image")} input[type=file]`);
  };
  // Bubbling to the window: an image box that takes files has cancelled the event already.
  window.addEventListener("dragover", (event) => {
    if (!draggingFiles(event) || event.defaultPrevented) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = droppedImageInput(event.target) ? "copy" : "none";
  });
  window.addEventListener("drop", (event) => {
    if (!draggingFiles(event) || event.defaultPrevented) return;
    event.preventDefault();
    const reader = droppedImageInput(event.target);
    if (reader && event.dataTransfer.files.length) upload(reader, event.dataTransfer.files[0]);
  });
}
