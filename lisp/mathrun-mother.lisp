;;;; The Maxima mother process: mathrun's side inside Maxima.
;;;;
;;;; Saved into the mother core by scripts/save-maxima-core.sh.  The server
;;;; starts the core as a Maxima REPL on a pipe, has it load the operator's
;;;; libraries, then sends
;;;;
;;;;     :lisp (mathrun-mother:serve "/path/libmathrun-fork.so" "/run/mathrun/netns")
;;;;
;;;; SERVE never returns in the mother: the C loop (ext/maxima-fork.c) forks
;;;; a child per request.  In each child it returns, and the REPL goes on
;;;; reading the job's input from the child's named pipe.

(defpackage :mathrun-mother
  (:use :cl)
  (:export #:serve #:+ready-marker+))

(in-package :mathrun-mother)

(defparameter +ready-marker+ (format nil "~Cmathrun-child-ready~%" (code-char 2))
  "The first thing a child writes: after it, everything is the job's output.")

;;; The variables STACK's plot functions read, as goemaxima sets them.
(defvar maxima::|$image_dir| "")
(defvar maxima::|$url_base| "!ploturl!")

(defun child-seed ()
  "Eight words the C side drew from the kernel for this child."
  (let ((seed (make-array 8 :element-type '(unsigned-byte 32))))
    (dotimes (i 8 seed)
      (setf (aref seed i)
            (sb-alien:alien-funcall
             (sb-alien:extern-alien "mathrun_child_seed"
                                    (function sb-alien:unsigned-int sb-alien:int))
             i)))))

(defun question (&rest args)
  "Maxima's questions (asksign, ...) would wait for an answer that never
comes: a job gets an error instead."
  (declare (ignore args))
  (maxima::merror "mathrun: Maxima asked a question; declare the facts with assume() instead."))

(setf (symbol-function 'maxima::retrieve) #'question)

(defvar *labels* t
  "Whether children answer as goemaxima's do, with Maxima's REPL labels and
prompts; NIL: the quiet form (no labels, no prompts).")

(defun start-child (root)
  "In a fresh child: its directories, its own random state, fresh labels."
  (let ((work (concatenate 'string root "/work")))
    ;; maxima_tempdir ends with a slash, as goemaxima's: STACK builds plot
    ;; file names as concat(maxima_tempdir, name).
    (setf maxima::*maxima-tempdir* work
          maxima::$maxima_tempdir (concatenate 'string work "/")
          maxima::*display-labels-p* *labels*
          maxima::|$image_dir| (concatenate 'string root "/output/")
          maxima::|$url_base| "!ploturl!"
          maxima::$linenum (if *labels* 1 0)))
  (let ((seed (child-seed)))
    (setf mt19937::*random-state*
          (mt19937::make-random-object :state (mt19937::init-random-state seed))
          *random-state* (sb-ext:seed-random-state seed)))
  (write-string +ready-marker+)
  ;; The REPL's prompt for this read was made in the mother, without
  ;; labels: the child shows its own first prompt, as a fresh Maxima does.
  (when *labels*
    (format t "~%~A" (maxima::main-prompt)))
  (finish-output))

(defun finish ()
  "The end of a Maxima session (end of input, quit()): flush, close stdout
and stderr, which is the server's sign that the job is done, and leave
without unwinding.  The kernel's teardown of the big address space (about
2 ms) then happens after the answer, not before it: an exiting process
closes its files only after freeing its memory."
  (ignore-errors (sb-impl::flush-standard-output-streams))
  (sb-unix:unix-close 1)
  (sb-unix:unix-close 2)
  (sb-ext:exit :code 0 :abort t))

(setf (symbol-function 'maxima::bye) #'finish)

(defun serve (library netns &optional (labels t))
  "Fork children for the server until its requests end; returns in a child.
LABELS: whether the children answer with Maxima's REPL labels (goemaxima's
form) or quietly."
  (setf *labels* labels)
  (sb-alien:load-shared-object library :dont-save t)
  (finish-output)
  ;; A raw fork() keeps only the calling thread: stop SBCL's finalizer
  ;; thread first, so that no child inherits its lock half-taken.
  (sb-thread::with-system-mutex (sb-thread::*make-thread-lock*)
    (sb-impl::finalizer-thread-stop))
  ;; What the mother allocated since its core was saved (this REPL's
  ;; reading, the shared object) is compacted now: a child then allocates
  ;; into fresh pages instead of copying half-filled ones on write.
  (sb-ext:gc :full t)
  (let ((root (sb-alien:alien-funcall
               (sb-alien:extern-alien "mathrun_fork_loop"
                                      (function sb-alien:c-string sb-alien:c-string))
               netns)))
    ;; Only a child gets here.  Any error now ends it, with the reason on
    ;; its output, instead of leaving a REPL that is never ready.  No
    ;; finalizer thread is started again: a child lives for one job, its
    ;; exit closes what a finalizer would, and a thread costs each child a
    ;; clone, its stacks' pages and a second thread to stop at every GC.
    (handler-case
        (start-child root)
      (error (e)
        (format t "mathrun-child-failed: ~A~%" e)
        (finish-output)
        (sb-ext:exit :code 1 :abort t))))
  (values))
